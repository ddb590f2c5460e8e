using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Export;
using DiffusionPrune.Studio.Catalog;

namespace DiffusionPrune.Studio.Batch;

/// <summary>
/// A sample plan (<c>samples/plans/NAME.json</c>) offered as a starting point: its settings, and its models as the
/// catalog lists them (matched by folder). Its output and root are ignored: a batch job writes its own folder.
/// </summary>
/// <param name="Name">The plan's file name without <c>.json</c>.</param>
/// <param name="Description">The plan's description.</param>
/// <param name="Settings">Its settings, the defaults where it says nothing (or something the form cannot hold).</param>
/// <param name="Models">Its models that the catalog lists, by their catalog names.</param>
/// <param name="Unlisted">How many of its models the catalog does not list.</param>
public sealed record BatchPreset(string Name, string Description, BatchSettings Settings, IReadOnlyList<string> Models, int Unlisted);

/// <summary>Reads the sample plans as presets for the Batch page; a plan it cannot read is left out.</summary>
public static class BatchPresets
{
    private static readonly JsonDocumentOptions Options = new() { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true, MaxDepth = 16 };

    /// <summary>The plans in <paramref name="folder"/> (not below it), by name, their models matched to <paramref name="catalog"/>.</summary>
    public static IReadOnlyList<BatchPreset> Load(string folder, IReadOnlyList<ModelSummary> catalog)
    {
        if (!Directory.Exists(folder)) return [];
        var presets = new List<BatchPreset>();
        foreach (string file in Directory.EnumerateFiles(folder, "*.json").Order(StringComparer.Ordinal))
            if (Read(file, catalog) is { } preset) presets.Add(preset);
        return presets;
    }

    /// <summary>One plan as a preset, or null when it is not a readable plan.</summary>
    public static BatchPreset? Read(string file, IReadOnlyList<ModelSummary> catalog)
    {
        JsonObject plan;
        try
        {
            if (new FileInfo(file).Length > 1 << 20) return null;
            if (JsonNode.Parse(File.ReadAllText(file), documentOptions: Options) is not JsonObject o) return null;
            plan = o;
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
        var defaults = new BatchSettings();
        var settings = defaults with
        {
            Methods = Strings(plan["methods"]) is { Count: > 0 } methods ? methods.Select(m => m.Trim().ToLowerInvariant()).ToList() : defaults.Methods,
            Targets = plan["targets"] is JsonArray targets && targets.All(t => Number(t) is > 0 and < 1) ? targets.Select(t => Number(t)!.Value).ToList() : defaults.Targets,
            PruneSteps = Int(plan["prune"]?["steps"]) ?? defaults.PruneSteps,
            Iterations = Int(plan["prune"]?["iterations"]) ?? defaults.Iterations,
            Calibration = Int(plan["prune"]?["calibration"]) ?? defaults.Calibration,
            PruneSeed = Int(plan["prune"]?["seed"]) ?? defaults.PruneSeed,
            EvalSamples = Int(plan["eval"]?["samples"]) ?? defaults.EvalSamples,
            EvalSteps = Int(plan["eval"]?["steps"]) ?? defaults.EvalSteps,
            EvalSeed = Int(plan["eval"]?["seed"]) ?? defaults.EvalSeed,
            Formats = Formats(plan["export"]?["formats"]) ?? defaults.Formats,
            Latency = !(plan.TryGetPropertyValue("latency", out var latency) && latency is null),
            LatencyBatches = plan["latency"]?["batches"] is JsonArray batches && batches.All(b => Int(b) is >= 1)
                ? batches.Select(b => Int(b)!.Value).Distinct().ToList() : defaults.LatencyBatches,
            LatencyWarmup = Int(plan["latency"]?["warmup"]) ?? defaults.LatencyWarmup,
            LatencyRuns = Int(plan["latency"]?["runs"]) ?? defaults.LatencyRuns,
        };

        // the plan's model paths resolve against its root, which resolves against the plan's folder
        string root = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(file))!, plan["root"] is JsonValue r && r.TryGetValue<string>(out var rs) ? rs : "."));
        var listed = new List<string>();
        int unlisted = 0;
        foreach (var entry in plan["models"] as JsonArray ?? [])
        {
            string? path = entry is JsonValue v && v.TryGetValue<string>(out var s) ? s
                : entry?["path"] is JsonValue p && p.TryGetValue<string>(out var ps) ? ps : null;
            string? folder = path is null ? null : Normal(Path.Combine(root, path));
            var model = folder is null ? null : catalog.FirstOrDefault(m => m.Problem is null && Normal(m.FolderPath) == folder);
            if (model is null) unlisted++;
            else if (!listed.Contains(model.Name)) listed.Add(model.Name);
        }
        string description = plan["description"] is JsonValue d && d.TryGetValue<string>(out var ds) ? ds : "";
        return new BatchPreset(Path.GetFileNameWithoutExtension(file), description, settings, listed, unlisted);
    }

    private static string Normal(string path) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));

    private static List<string>? Strings(JsonNode? node) =>
        node is JsonArray array && array.All(n => n is JsonValue v && v.TryGetValue<string>(out _)) ? array.Select(n => n!.GetValue<string>()).ToList() : null;

    private static double? Number(JsonNode? node) => node is JsonValue v && v.TryGetValue<double>(out var d) && double.IsFinite(d) ? d : null;

    private static int? Int(JsonNode? node) => Number(node) is double d && d == Math.Floor(d) && d is >= 0 and <= 1_000_000 ? (int)d : null;

    private static IReadOnlyList<ExportFormat>? Formats(JsonNode? node)
    {
        string? list = node is JsonValue v && v.TryGetValue<string>(out var s) ? s : Strings(node) is { } names ? string.Join(",", names) : null;
        if (list is null) return null;
        try
        {
            return ModelExporter.ParseFormats(list);
        }
        catch (ArgumentException)
        {
            return null;
        }
    }
}
