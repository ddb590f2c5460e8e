using System.CommandLine;
using DiffusionPrune.Batch;
using DiffusionPrune.Pipeline;

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
        var shard = new Option<string?>("--shard") { Description = "Run only share i of N of the items (e.g. 2/4), for N workers on one output folder; items are claimed atomically. Then --summarize." };
        var summarize = new Option<bool>("--summarize") { Description = "Only write summary.md, summary.csv and pareto.png from the item folders (after sharded runs)." };
        var quiet = CliOutput.QuietOption();
        var json = CliOutput.JsonOption();
        var command = new Command("batch", "Prune, evaluate, export and time models x methods x targets from a plan; resumable; writes summary.md/csv and pareto.png.")
        {
            plan, output, force, device, shard, summarize, quiet, json,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var batchPlan = BatchPlan.Load(parse.GetValue(plan)!, parse.GetValue(output));
            var console = CliOutput.From(parse, quiet, json);
            if (parse.GetValue(summarize))
            {
                var files = BatchRunner.Summarize(batchPlan);
                console.Result($"wrote {files.Markdown}, {files.Csv} and {files.Pareto}: {files.Rows.Count} finished item(s), {files.Unfinished.Count} unfinished");
                console.Summary(new { SummaryMarkdown = Path.GetFullPath(files.Markdown), SummaryCsv = Path.GetFullPath(files.Csv),
                    Pareto = Path.GetFullPath(files.Pareto), Finished = files.Rows.Count, Unfinished = files.Unfinished.Count });
                if (files.Unfinished.Count == 0) return 0;
                Console.Error.WriteLine($"error: {files.Unfinished.Count} item(s) are not finished yet: " +
                    string.Join(", ", files.Unfinished.Take(8)) + (files.Unfinished.Count > 8 ? ", ..." : "") +
                    "; run the shards that hold them again (finished items are skipped), then --summarize.");
                return 1;
            }
            var label = (PipelineStage stage) => stage switch
            {
                PipelineStage.Prune => "  EcoDiff iteration",
                PipelineStage.Evaluate => "  sampled",
                var other => "  " + other.ToString().ToLowerInvariant(),
            };
            var result = console.Track(progress => BatchRunner.RunAsync(batchPlan, new BatchRunOptions
            {
                Shard = parse.GetValue(shard) is string text ? BatchShard.Parse(text) : null,
                Force = parse.GetValue(force),
                Device = CliCommon.ResolveDevice(parse.GetValue(device)!),
                Log = console.Result,
                Progress = progress,
                Cancellation = CliCommon.Interrupt,
            }), label, notes: false);
            console.EndProgress();
            console.Summary(new
            {
                result.Ran,
                result.Skipped,
                Failed = result.Failed.Select(f => new { Item = f.Item.ToString(), f.Error }).ToList(),
                result.HeldElsewhere,
                SummaryMarkdown = result.Summary is { } md ? Path.GetFullPath(md.Markdown) : null,
                SummaryCsv = result.Summary is { } csv ? Path.GetFullPath(csv.Csv) : null,
                Pareto = result.Summary is { } pareto ? Path.GetFullPath(pareto.Pareto) : null,
                Finished = result.Summary?.Rows.Count,
                Unfinished = result.Summary?.Unfinished.Count,
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
