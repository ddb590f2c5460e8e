using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;

namespace DiffusionPrune.Pruning.Layers;

/// <summary>What removing each layer saves, in one budget's unit, and the model's total in that unit.</summary>
public sealed record LayerCostTable(LayerBudget Budget, double Total, IReadOnlyDictionary<string, double> Saving, string Unit, string? Source = null);

/// <summary>
/// Per-layer savings for each budget: parameters (exact, from the groups), MACs (the model's MACs minus those of the model
/// built without the layer) and latency (TorchSharp median of the full model minus the model without the layer, measured on
/// this machine and cached beside the model, LayerMerge's lookup table).
/// </summary>
public static class LayerCosts
{
    /// <summary>The latency table's file in the model folder.</summary>
    public const string LatencyFile = "dprune_layer_latency.json";

    public static LayerCostTable Parameters(PrunableGroups groups) =>
        new(LayerBudget.Params, groups.Model.ParameterCount(), groups.Layers.ToDictionary(l => l.Path, l => (double)l.RemovedParameters, StringComparer.Ordinal), "parameters");

    public static LayerCostTable Macs(PrunableGroups groups)
    {
        long full = ModelCost.Measure(groups.Model).Macs;
        var saving = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var layer in groups.Layers)
        {
            using var without = StructuralSurgery.Apply(groups.Model, Only(layer));
            saving[layer.Path] = full - ModelCost.Measure(without).Macs;
        }
        return new LayerCostTable(LayerBudget.Macs, full, saving, "MACs");
    }

    /// <summary>
    /// The latency table at <paramref name="batch"/>: read from <paramref name="cacheFolder"/> if it holds one for this
    /// machine (CPU model and flags, libtorch, threads), model config and layer set; else measured and written there (a
    /// folder that cannot be written is logged and skipped). Savings below zero (timing noise) count as zero.
    /// </summary>
    public static LayerCostTable Latency(PrunableGroups groups, string? cacheFolder, int batch = 1, LatencyOptions? options = null, Action<string>? log = null)
    {
        options ??= new LatencyOptions { WarmupRuns = 3, TimedRuns = 20 };
        string key = LatencyKey(groups, cacheFolder, batch, options);
        string? file = cacheFolder is null ? null : Path.Combine(cacheFolder, LatencyFile);
        if (file is not null && ReadCached(file, key, batch) is { } cached)
        {
            log?.Invoke($"latency table: read from {LatencyFile} beside the model");
            return cached with { Source = "cache" };
        }
        log?.Invoke($"latency table: measuring the model and {groups.Layers.Count} models without one layer each (batch {batch}, {Rounds} interleaved rounds of {options.TimedRuns} timed runs)");
        // Every variant is timed in interleaved rounds and keeps its best median, so a burst of load on the machine
        // slows one round of all variants rather than one variant.
        var variants = new List<(string? Path, DiffusionModel Model)> { (null, groups.Model) };
        try
        {
            foreach (var layer in groups.Layers) variants.Add((layer.Path, StructuralSurgery.Apply(groups.Model, Only(layer))));
            var best = variants.Select(_ => double.PositiveInfinity).ToArray();
            for (int round = 0; round < Rounds; round++)
                for (int v = 0; v < variants.Count; v++)
                {
                    best[v] = Math.Min(best[v], TorchLatency.Measure(variants[v].Model, [batch], options)[0].MedianMs);
                    NativeMemory.Trim();
                }
            double full = best[0];
            var without = new Dictionary<string, double>(StringComparer.Ordinal);
            for (int v = 1; v < variants.Count; v++) without[variants[v].Path!] = best[v];
            var table = new LayerCostTable(LayerBudget.Latency, full,
                without.ToDictionary(kv => kv.Key, kv => Math.Max(0, full - kv.Value), StringComparer.Ordinal), LatencyUnit(batch), "measured");
            if (file is not null) WriteCached(file, key, full, without, log);
            return table;
        }
        finally
        {
            foreach (var (path, model) in variants)
                if (path is not null) model.Dispose();
        }
    }

    /// <summary>Interleaved timing rounds of the latency table.</summary>
    public const int Rounds = 3;

    private static string LatencyUnit(int batch) => $"latency at batch {batch}";
    private static PruningPlan Only(LayerGroup layer)
    {
        var plan = new PruningPlan();
        plan.RemovedLayers.Add(layer.Path);
        return plan;
    }

    private static string LatencyKey(PrunableGroups groups, string? folder, int batch, LatencyOptions options)
    {
        string config = folder is not null && File.Exists(Path.Combine(folder, ModelFolder.Config))
            ? SourceIdentity.ShortHash(Path.Combine(folder, ModelFolder.Config)) : groups.Model.ClassName;
        return string.Join("|", NumericsGuard.MachineFingerprint(), $"threads {TorchSharp.torch.get_num_threads()}", $"batch {batch}",
            $"runs {Rounds}x({options.WarmupRuns}+{options.TimedRuns})", $"config {config}", $"params {groups.Model.ParameterCount()}",
            $"layers {string.Join(",", groups.Layers.Select(l => l.Path))}");
    }

    private static LayerCostTable? ReadCached(string file, string key, int batch)
    {
        try
        {
            if (!File.Exists(file)) return null;
            var root = JsonNode.Parse(File.ReadAllText(file))?["tables"]?[key];
            if (root?["full_ms"] is not JsonValue fullJson || root["without_ms"] is not JsonObject withoutJson) return null;
            double full = fullJson.GetValue<double>();
            var without = new Dictionary<string, double>(StringComparer.Ordinal);
            foreach (var (path, ms) in withoutJson)
                if (ms is JsonValue value) without[path] = value.GetValue<double>();
                else return null;
            return new LayerCostTable(LayerBudget.Latency, full, without.ToDictionary(kv => kv.Key, kv => Math.Max(0, full - kv.Value), StringComparer.Ordinal), LatencyUnit(batch));
        }
        catch (Exception e) when (e is JsonException or IOException or InvalidOperationException or FormatException or UnauthorizedAccessException)
        {
            return null; // a damaged or foreign cache is measured again
        }
    }

    private static void WriteCached(string file, string key, double full, IReadOnlyDictionary<string, double> without, Action<string>? log)
    {
        try
        {
            JsonObject root;
            try
            {
                root = File.Exists(file) ? JsonNode.Parse(File.ReadAllText(file)) as JsonObject ?? new JsonObject() : new JsonObject();
            }
            catch (JsonException)
            {
                root = new JsonObject();
            }
            if (root["tables"] is not JsonObject tables) root["tables"] = tables = new JsonObject();
            var withoutJson = new JsonObject();
            foreach (var (path, ms) in without) withoutJson[path] = Math.Round(ms, 4);
            tables[key] = new JsonObject
            {
                ["cpu"] = CpuInfo.Read().Model,
                ["measured"] = DateTimeOffset.UtcNow.ToString("u", CultureInfo.InvariantCulture),
                ["full_ms"] = Math.Round(full, 4),
                ["without_ms"] = withoutJson,
            };
            string temp = file + ".tmp";
            File.WriteAllText(temp, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            File.Move(temp, file, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            log?.Invoke($"latency table: not cached ({e.Message}); it will be measured again next time");
        }
    }
}
