using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DiffusionPrune.Batch;
using DiffusionPrune.Studio.Jobs;

namespace DiffusionPrune.Studio.Batch;

/// <summary>An item of a batch's last run that failed, and why.</summary>
public sealed record BatchFailure(string Item, string Error);

/// <summary>
/// A finished batch as the Studio shows it: its folder name (the page's address), its plan, the summary's rows (each with
/// its model's original, as <see cref="BatchSummary"/> compares them), the items not finished and the last run's failures.
/// </summary>
/// <param name="Name">The folder's name.</param>
/// <param name="Folder">The folder.</param>
/// <param name="WrittenAt">When summary.md was last written.</param>
/// <param name="Plan">The plan, or null when it no longer loads (a model was moved or deleted): see <paramref name="Problem"/>.</param>
/// <param name="Rows">The finished items, in plan order.</param>
/// <param name="Unfinished">The items without a result for the plan's settings.</param>
/// <param name="Failed">The items the last run failed, with the reasons.</param>
/// <param name="Problem">Why the plan cannot be read now; null when it can.</param>
public sealed record BatchEntry(string Name, string Folder, DateTimeOffset WrittenAt, BatchPlan? Plan, IReadOnlyList<BatchComparison> Rows,
    IReadOnlyList<BatchItem> Unfinished, IReadOnlyList<BatchFailure> Failed, string? Problem)
{
    /// <summary>The timed batch sizes (none when latency was off).</summary>
    public IReadOnlyList<int> LatencyBatches => Plan?.Latency?.Batches ?? [];
}

/// <summary>
/// The batches under the Studio's output (<c>batches/NAME/</c>), each written by a batch job; a batch is listed once its
/// summary.md exists. Names and files are taken from requests only when they are plain names (no separators, no
/// <c>..</c>) of what is there, and only PNG, markdown, CSV and JSON files directly in a batch's folder are served, so
/// nothing else (an item's models, anything outside) can be read through them.
/// </summary>
public sealed partial class BatchFolders(string root)
{
    /// <summary>The folder batches are written under.</summary>
    public string Root { get; } = Path.GetFullPath(root);

    private static bool IsPlain(string? name) => Hosting.PlainNames.Is(name);

    /// <summary>Every finished batch, newest first.</summary>
    public IReadOnlyList<BatchEntry> List()
    {
        if (!Directory.Exists(Root)) return [];
        var entries = new List<BatchEntry>();
        foreach (var folder in Directory.EnumerateDirectories(Root))
            if (Find(Path.GetFileName(folder)) is { } entry) entries.Add(entry);
        return entries.OrderByDescending(e => e.WrittenAt).ThenByDescending(e => e.Name, StringComparer.Ordinal).ToList();
    }

    /// <summary>The batch named <paramref name="name"/> (a plain name with a summary), or null when there is none.</summary>
    public BatchEntry? Find(string? name)
    {
        if (!IsPlain(name)) return null;
        string folder = Path.Combine(Root, name!);
        string markdown = Path.Combine(folder, BatchSummary.MarkdownName);
        if (!File.Exists(markdown) || (File.GetAttributes(folder) & FileAttributes.ReparsePoint) != 0) return null;
        var written = new DateTimeOffset(File.GetLastWriteTimeUtc(markdown), TimeSpan.Zero);
        var failed = ReadFailures(Path.Combine(folder, BatchJob.RunFileName));
        BatchPlan plan;
        try
        {
            plan = BatchPlan.Load(Path.Combine(folder, BatchJob.PlanFileName));
        }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException)
        {
            return new BatchEntry(name!, folder, written, null, [], [], failed, $"The plan cannot be read now: {e.Message}");
        }
        // as BatchSummary writes them: a finished item (the plan's settings) is a row, with its model's original beside it
        var rows = new List<BatchComparison>();
        var unfinished = new List<BatchItem>();
        foreach (var model in plan.Models)
        {
            var modelRows = new List<BatchSummaryRow>();
            foreach (var item in plan.Items().Where(i => i.Model == model))
            {
                if (Row(plan, item) is { } row) modelRows.Add(row);
                else unfinished.Add(item);
            }
            var original = modelRows.FirstOrDefault(r => r.IsOriginal);
            rows.AddRange(modelRows.Select(r => new BatchComparison(r, original)));
        }
        return new BatchEntry(name!, folder, written, plan, rows, unfinished, failed, null);
    }

    private static BatchSummaryRow? Row(BatchPlan plan, BatchItem item)
    {
        try
        {
            return BatchRunner.Inspect(plan, item) == BatchRunner.ItemState.Finished && BatchRunner.ReadItem(plan.FolderOf(item)) is { } record
                ? BatchSummaryRow.FromItem(record)
                : null;
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or FormatException or IOException)
        {
            return null;
        }
    }

    private static List<BatchFailure> ReadFailures(string path)
    {
        try
        {
            return File.Exists(path) && JsonNode.Parse(File.ReadAllText(path))?["failed"] is JsonArray failed
                ? failed.Select(f => new BatchFailure((string?)f?["item"] ?? "?", (string?)f?["error"] ?? "")).ToList()
                : [];
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }

    /// <summary>The path of <paramref name="file"/> (a PNG, markdown, CSV or JSON file directly in the batch's folder), or null.</summary>
    public string? FileOf(string? name, string? file)
    {
        if (!IsPlain(name) || !IsPlain(file)) return null;
        if (Path.GetExtension(file) is not (".png" or ".md" or ".csv" or ".json")) return null;
        string folder = Path.Combine(Root, name!);
        string path = Path.Combine(folder, file!);
        if (!File.Exists(Path.Combine(folder, BatchSummary.MarkdownName)) || !File.Exists(path)) return null;
        // nothing that links out of the folder: the folder itself and the file must be what they seem
        if ((File.GetAttributes(folder) & FileAttributes.ReparsePoint) != 0 || (File.GetAttributes(path) & FileAttributes.ReparsePoint) != 0) return null;
        return path;
    }
}
