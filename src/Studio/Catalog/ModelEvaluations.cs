using System.Text.Json.Nodes;
using DiffusionPrune.Studio.Jobs;

namespace DiffusionPrune.Studio.Catalog;

/// <summary>
/// The evaluations the Studio ran for a model: <c>evaluations/ESCAPED-NAME/eval-TIME.json</c> under its output, one
/// folder per catalog name (escaped, so <c>pruned/x</c> is one plain folder name), never in the model's own folder.
/// </summary>
public static class ModelEvaluations
{
    /// <summary>The folder of <paramref name="catalogName"/>'s evaluations under <paramref name="outputs"/>.</summary>
    public static string FolderOf(string outputs, string catalogName) =>
        Path.Combine(outputs, StudioOptions.EvaluationsFolder, Uri.EscapeDataString(catalogName));

    /// <summary>A new report path for an evaluation of <paramref name="catalogName"/>.</summary>
    public static string NewReportPath(string outputs, string catalogName) =>
        OutputNames.NewFolder(FolderOf(outputs, catalogName), "eval") + ".json";

    /// <summary>The newest readable report for <paramref name="catalogName"/>, or null when there is none.</summary>
    public static JsonNode? Latest(string outputs, string catalogName)
    {
        string folder = FolderOf(outputs, catalogName);
        if (!Directory.Exists(folder)) return null;
        foreach (var file in Directory.EnumerateFiles(folder, "*.json").OrderByDescending(File.GetLastWriteTimeUtc))
        {
            try
            {
                return JsonNode.Parse(File.ReadAllText(file));
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or IOException)
            {
                // a damaged report is skipped; an older one may still be read
            }
        }
        return null;
    }
}
