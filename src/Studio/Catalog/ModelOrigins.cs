using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Formats;

namespace DiffusionPrune.Studio.Catalog;

/// <summary>Where a listed model came from, as the records beside its weights say.</summary>
public static class ModelOrigins
{
    /// <summary>
    /// The listed model that the prune report in <paramref name="folder"/> names as its source (<c>settings.model</c>,
    /// "NAME (sha256 ...)", NAME being the source folder's name): the original of a pruned model, and of a distilled one
    /// (distillation carries the report over). Null when there is no readable report or its source is not listed;
    /// <paramref name="folder"/> itself is never returned.
    /// </summary>
    public static ModelSummary? PrunedFrom(string folder, IEnumerable<ModelSummary> models)
    {
        string report = Path.Combine(folder, ModelFolder.PruneReport);
        if (!File.Exists(report)) return null;
        string? source;
        try
        {
            source = JsonNode.Parse(File.ReadAllText(report))?["settings"]?["model"]?.GetValue<string>();
        }
        catch (Exception e) when (e is JsonException or IOException or InvalidOperationException or UnauthorizedAccessException)
        {
            return null; // an unreadable report: the user picks the original
        }
        if (source is null) return null;
        string self = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        return models.Where(m => m.Problem is null && Path.TrimEndingDirectorySeparator(Path.GetFullPath(m.FolderPath)) != self)
            .FirstOrDefault(m => Names(source, m.Name) || Names(source, Path.GetFileName(Path.TrimEndingDirectorySeparator(m.FolderPath))));
    }

    /// <summary>Whether a source description ("NAME" or "NAME (sha256 ...)") names <paramref name="name"/>.</summary>
    private static bool Names(string source, string name) =>
        source == name || source.StartsWith(name + " (", StringComparison.Ordinal);
}
