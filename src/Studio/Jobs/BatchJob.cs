using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DiffusionPrune.Batch;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Studio.Batch;
using DiffusionPrune.Studio.Catalog;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Runs a batch plan through the core's <see cref="BatchRunner"/> into a folder under <c>batches/</c>: models x methods x
/// targets, each item pruned, evaluated, exported and timed, then summary.md, summary.csv and pareto.png, which the Batch
/// pages show. The plan is written by <see cref="Create"/> from catalog models and form settings as the folder's
/// <c>plan.json</c>, never taken from a user's file. An item that fails is reported and the others go on; the run's
/// record (<see cref="RunFileName"/>) keeps the failures' reasons. Cancelling stops between an item's steps; run again
/// (resumed after a restart), finished items are skipped and only the rest are done.
/// </summary>
public sealed partial class BatchJob(string planPath, string title) : StudioJob
{
    /// <summary>The plan file the job writes beside its results.</summary>
    public const string PlanFileName = "plan.json";

    /// <summary>The Studio's record of the last run: items run, skipped and failed (with why), written after the summary.</summary>
    public const string RunFileName = "batch-run.json";

    /// <summary>The plan the job runs (<c>batches/NAME/plan.json</c>).</summary>
    public string PlanPath { get; } = planPath;

    /// <summary>What the plan sweeps, for people: "tiny × magnitude, random × 20%".</summary>
    public string Title { get; } = title;

    /// <inheritdoc />
    public override string Kind => "batch";

    /// <inheritdoc />
    public override string? OutputPath => Path.GetDirectoryName(PlanPath);

    /// <inheritdoc />
    public override string? RequestJson => JsonSerializer.Serialize(new StoredBatch(PlanPath, Title));

    /// <summary>What a batch job stores to be run again.</summary>
    internal sealed record StoredBatch(string PlanPath, string Title);

    /// <summary>The batch's name: its folder's, as the Batch pages address it.</summary>
    public string BatchName => Path.GetFileName(Path.GetDirectoryName(PlanPath)!);

    /// <inheritdoc />
    public override string Name => $"Batch {Title}";

    /// <summary>
    /// A job for <paramref name="models"/> (catalog entries: their folders are the catalog's, already confined) with
    /// <paramref name="settings"/>: validates the plan with the core, then writes it as <c>plan.json</c> in a new folder under
    /// <paramref name="batchesRoot"/>. Nothing is written when the plan is refused.
    /// </summary>
    /// <exception cref="BatchPlanException">The core refuses the plan (the message names the setting).</exception>
    public static BatchJob Create(IReadOnlyList<ModelSummary> models, BatchSettings settings, string batchesRoot)
    {
        if (models.Count == 0) throw new BatchPlanException("Choose at least one model.");
        var named = new List<(string Name, string Folder)>();
        foreach (var model in models)
        {
            // the item folders are named after the model: its shown name, in the characters a plan allows, once each
            string stem = Unsafe().Replace(OutputNames.Shown(model.Name), "-").Trim('.', '-');
            if (stem.Length == 0) stem = "model";
            string name = stem;
            for (int n = 2; named.Any(m => string.Equals(m.Name, name, StringComparison.OrdinalIgnoreCase)); n++)
                name = string.Create(CultureInfo.InvariantCulture, $"{stem}-{n}");
            named.Add((name, model.FolderPath));
        }
        string title = Describe(named.Select(m => m.Name).ToList(), settings.Methods, settings.Targets);
        string folder = OutputNames.NewFolder(batchesRoot, "batch");
        string planPath = Path.Combine(folder, PlanFileName);
        string json = settings.ToPlan(named, $"From the Studio: {title}.").ToJsonString(new JsonSerializerOptions { WriteIndented = true });
        try
        {
            BatchPlan.Parse(json, planPath); // every check the core makes, before anything is written
        }
        catch (BatchPlanException e) when (e.Message.StartsWith(PlanFileName + ": ", StringComparison.Ordinal))
        {
            throw new BatchPlanException(e.Message[(PlanFileName.Length + 2)..]); // the plan is the form: no file to name
        }
        Directory.CreateDirectory(folder);
        File.WriteAllText(planPath, json);
        return new BatchJob(planPath, title);
    }

    /// <summary>"a, b × magnitude, random × 10%, 20%".</summary>
    public static string Describe(IReadOnlyList<string> models, IReadOnlyList<string> methods, IReadOnlyList<double> targets) =>
        $"{string.Join(", ", models)} × {string.Join(", ", methods)} × {string.Join(", ", targets.Order().Select(t => t.ToString("0.#%", CultureInfo.InvariantCulture)))}";

    [GeneratedRegex("[^A-Za-z0-9._-]+")]
    private static partial Regex Unsafe();

    [GeneratedRegex(@"^\[(\d+)/(\d+)\] ")]
    private static partial Regex ItemLine();

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        var plan = BatchPlan.Load(PlanPath);
        int total = Math.Max(1, plan.Items().Count);
        int current = 0;
        IProgress<StageProgress> stage = PruneJob.Forward(progress, 0, 1.0 / total);
        void Log(string line)
        {
            // the runner numbers its lines by item ("[2/5] tiny magnitude 20%: ..."): each item gets its share of the bar
            if (ItemLine().Match(line) is { Success: true } m && int.Parse(m.Groups[1].ValueSpan, CultureInfo.InvariantCulture) is int item && item != current)
            {
                current = item;
                stage = PruneJob.Forward(progress, (item - 1.0) / total, 1.0 / total);
                progress.Report(new JobProgress((item - 1.0) / total, line));
            }
            else
            {
                progress.Report(new JobProgress(0, line, Note: true));
            }
        }
        var result = await BatchRunner.RunAsync(plan, new BatchRunOptions
        {
            Log = Log,
            Progress = new SynchronousProgress<StageProgress>(p => stage.Report(p)),
            Cancellation = cancellationToken,
        });
        var summary = result.Summary!; // an unsharded run always writes one
        WriteRunRecord(result);
        var inv = CultureInfo.InvariantCulture;
        string text = string.Create(inv,
            $"{result.Ran} item(s) run, {result.Skipped} skipped as finished earlier, {result.Failed.Count} failed; {summary.Rows.Count} of {total} items finished. " +
            $"Summary: {Path.Combine(StudioOptions.BatchesFolder, BatchName, BatchSummary.MarkdownName)} (summary.csv and pareto.png beside it).");
        if (result.Failed.Count > 0)
            text += " Failed: " + string.Join("; ", result.Failed.Select(f => $"{f.Item}: {f.Error}")) + ". Run the batch again to retry them.";
        progress.Report(new JobProgress(1, text, Note: true));
        Result = text;
    }

    /// <summary>Writes <see cref="RunFileName"/>: what this run did, for the summary page (the failures' reasons are nowhere else).</summary>
    private void WriteRunRecord(BatchRunResult result)
    {
        var record = new JsonObject
        {
            ["ran"] = result.Ran,
            ["skipped"] = result.Skipped,
            ["failed"] = new JsonArray(result.Failed.Select(f => (JsonNode)new JsonObject { ["item"] = f.Item.ToString(), ["error"] = f.Error }).ToArray()),
            ["finished_at"] = DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture),
        };
        Runtime.AtomicFile.Replace(Path.Combine(OutputPath!, RunFileName), record.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
