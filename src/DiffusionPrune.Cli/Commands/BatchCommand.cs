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
        var quiet = CliOutput.QuietOption();
        var json = CliOutput.JsonOption();
        var command = new Command("batch", "Prune, evaluate, export and time models x methods x targets from a plan; resumable; writes summary.md/csv and pareto.png.")
        {
            plan, output, force, device, quiet, json,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var batchPlan = BatchPlan.Load(parse.GetValue(plan)!, parse.GetValue(output));
            var console = CliOutput.From(parse, quiet, json);
            var result = BatchRunner.Run(batchPlan, new BatchRunOptions
            {
                Force = parse.GetValue(force),
                Device = CliCommon.ResolveDevice(parse.GetValue(device)!),
                Log = console.Result,
                OnEvalProgress = (done, total) => console.Progress("  sampled", done, total),
                OnPruneIteration = it => console.Progress("  EcoDiff iteration", it.Iteration, batchPlan.Prune.Iterations, $"loss {it.Loss:F5}"),
            });
            console.EndProgress();
            console.Summary(new
            {
                result.Ran,
                result.Skipped,
                Failed = result.Failed.Select(f => new { Item = f.Item.ToString(), f.Error }).ToList(),
                SummaryMarkdown = Path.GetFullPath(result.Summary.Markdown),
                SummaryCsv = Path.GetFullPath(result.Summary.Csv),
                Pareto = Path.GetFullPath(result.Summary.Pareto),
                Finished = result.Summary.Rows.Count,
                Unfinished = result.Summary.Unfinished.Count,
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
