using System.Text.Json.Nodes;

namespace DiffusionPrune.Pruning.Layers;

/// <summary>What a layer prune chose and why: scores, savings in the budget's unit, the target and what was reached.</summary>
public sealed record LayerPruneSummary(
    LayerBudget Budget, LayerSelection Selection, string Unit, double Total, double TargetFraction, double AchievedFraction,
    IReadOnlyList<string> Removed, IReadOnlyDictionary<string, double> Scores, IReadOnlyDictionary<string, double> Savings, AdditivityCheck? Additivity,
    string? LatencySource)
{
    /// <summary>Learnable depth: what the one-shot LAPTOP choice at the same budget removes, for comparison.</summary>
    public IReadOnlyList<string>? OneShotRemoved { get; init; }

    /// <summary>Learnable depth: the most probable layer sets at the end of training.</summary>
    public IReadOnlyList<(IReadOnlyList<string> Layers, double Probability)>? LearnedSets { get; init; }

    /// <summary>Learnable depth: whether the one-shot choice removes the same layers.</summary>
    public bool? SameAsOneShot => OneShotRemoved?.Order(StringComparer.Ordinal).SequenceEqual(Removed.Order(StringComparer.Ordinal));

    /// <summary>How the layers were chosen: knapsack, greedy, or learned (the most probable set of learnable depth).</summary>
    public string SelectionName => LearnedSets is not null ? "learned" : Selection.ToString().ToLowerInvariant();

    public JsonObject ToJson()
    {
        var layers = new JsonObject();
        foreach (var (path, score) in Scores)
            layers[path] = new JsonObject
            {
                ["score"] = score,
                ["saving"] = Savings[path],
                ["removed"] = Removed.Contains(path, StringComparer.Ordinal),
            };
        var json = new JsonObject
        {
            ["budget"] = Budget.ToString().ToLowerInvariant(),
            ["selection"] = SelectionName,
            ["unit"] = Unit,
            ["total"] = Total,
            ["target_fraction"] = TargetFraction,
            ["achieved_fraction"] = Math.Round(AchievedFraction, 6),
            ["layers"] = layers,
        };
        if (LatencySource is not null) json["latency_table"] = LatencySource;
        if (OneShotRemoved is not null)
        {
            json["one_shot_removed"] = new JsonArray(OneShotRemoved.Select(p => (JsonNode?)p).ToArray());
            json["same_as_one_shot"] = SameAsOneShot;
        }
        if (LearnedSets is not null)
            json["learned_sets"] = new JsonArray(LearnedSets.Select(s => (JsonNode?)new JsonObject
            {
                ["layers"] = new JsonArray(s.Layers.Select(l => (JsonNode?)l).ToArray()),
                ["probability"] = Math.Round(s.Probability, 4),
            }).ToArray());
        if (Additivity is not null)
            json["additivity"] = new JsonArray(Additivity.Samples.Select(a => (JsonNode?)new JsonObject
            {
                ["layers"] = new JsonArray(a.Layers.Select(l => (JsonNode?)l).ToArray()),
                ["predicted"] = a.Predicted,
                ["measured"] = a.Measured,
            }).ToArray());
        return json;
    }
}
