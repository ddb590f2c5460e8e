using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;

namespace DiffusionPrune.Export;

/// <summary>
/// The parts of a model card the single-model and the pipeline exporters share: how a structure reads ("3 layers
/// narrowed, 1 removed"), the pruning table taken from a <c>prune_report.json</c>, and the JSON-to-cell formatting
/// (a missing or non-numeric value reads "—").
/// </summary>
internal static class ModelCardText
{
    /// <summary>"no", or how many layers the structure narrows and removes.</summary>
    public static string Pruned(ModelStructure s) =>
        s.IsEmpty ? "no" : $"{s.ResnetInnerChannels.Count + s.AttentionHeads.Count + s.FeedForwardInner.Count} layers narrowed, {s.RemovedLayers.Count} removed";

    /// <summary>
    /// Appends the "## Pruning" section: method, target and achieved removal, parameters and MACs before → after.
    /// <paramref name="parameters"/> names the parameter column ("parameters", "U-Net parameters"); <paramref name="from"/>
    /// says where the report was found.
    /// </summary>
    public static void AppendPruning(StringBuilder card, JsonObject prune, string parameters, string from)
    {
        card.AppendLine();
        card.AppendLine("## Pruning");
        card.AppendLine();
        card.AppendLine($"| method | target removed | achieved removed | {parameters} before → after | MACs before → after |");
        card.AppendLine("|---|---|---|---|---|");
        card.AppendLine($"| {Text(prune["method"])} | {Percent(prune["target_removed_params"])} | {Percent(prune["achieved_removed_params"])} | " +
            $"{Count(prune["params_before"])} → {Count(prune["params_after"])} | {Count(prune["macs_before"])} → {Count(prune["macs_after"])} |");
        card.AppendLine();
        card.AppendLine($"From `{ModelFolder.PruneReport}` {from}.");
    }

    public static string Text(JsonNode? node) => node is JsonValue v ? v.ToString() : "—";

    public static string Number(JsonNode? node, string format) =>
        node is JsonValue v && v.TryGetValue<double>(out var d) ? d.ToString(format, CultureInfo.InvariantCulture) : "—";

    public static string Count(JsonNode? node) =>
        node is JsonValue v && v.TryGetValue<double>(out var d) ? ((long)d).ToString("N0", CultureInfo.InvariantCulture) : "—";

    public static string Percent(JsonNode? node) =>
        node is JsonValue v && v.TryGetValue<double>(out var d) ? d.ToString("P1", CultureInfo.InvariantCulture) : "—";
}
