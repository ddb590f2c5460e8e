using System.CommandLine;
using DiffusionPrune.Batch;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune batch PLAN.json [--output DIR] [--force]</c>: a resumable sweep (see <see cref="BatchRunner"/>).</summary>
public static class BatchCommand
{
    public static Command Create()
    {
        var plan = new Argument<string>("plan") { Description = "The batch plan (JSON; see samples/plans/README.md)." };
        var output = new Option<string?>("--output") { Description = "Results folder (default: the plan's \"output\")." };
        var force = new Option<bool>("--force") { Description = "Run every item again, even those already finished." };
        var device = CliCommon.DeviceOption();
        var command = new Command("batch", "Prune, evaluate, export and time models x methods x targets from a plan; resumable; writes summary.md/csv and pareto.png.")
        {
            plan, output, force, device,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var batchPlan = BatchPlan.Load(parse.GetValue(plan)!, parse.GetValue(output));
            bool progressShown = false;
            void Log(string line)
            {
                if (progressShown) Console.Error.WriteLine();
                progressShown = false;
                Console.WriteLine(line);
            }
            var result = BatchRunner.Run(batchPlan, new BatchRunOptions
            {
                Force = parse.GetValue(force),
                Device = CliCommon.ResolveDevice(parse.GetValue(device)!),
                Log = Log,
                OnEvalProgress = (done, total) =>
                {
                    Console.Error.Write($"\r  sampled {done}/{total}   ");
                    progressShown = true;
                },
                OnPruneIteration = it =>
                {
                    Console.Error.Write($"\r  EcoDiff iteration {it.Iteration}/{batchPlan.Prune.Iterations} loss {it.Loss:F5}   ");
                    progressShown = true;
                },
            });
            if (result.Failed.Count == 0) return 0;
            Console.Error.WriteLine($"error: {result.Failed.Count} item(s) failed; run the plan again to retry them:");
            foreach (var (item, error) in result.Failed)
                Console.Error.WriteLine($"  {item}: {error}");
            return 1;
        }));
        return command;
    }
}
