namespace DiffusionPrune.Pruning.Layers;

/// <summary>What a layer prune's target measures: parameters, MACs or measured latency.</summary>
public enum LayerBudget { Params, Macs, Latency }

/// <summary>How layers are chosen from scores and costs.</summary>
public enum LayerSelection
{
    /// <summary>0/1 knapsack by dynamic programming: the least total score whose cost meets the target.</summary>
    Knapsack,

    /// <summary>Baseline: remove layers in order of score per unit cost until the target is met.</summary>
    Greedy,
}

/// <summary>A candidate layer: what removing it saves (in the budget's unit) and what it costs in quality (its score).</summary>
public sealed record LayerItem(string Path, double Saving, double Score);

/// <summary>The chosen layers, what they save in all and what they cost in score.</summary>
public sealed record LayerChoice(IReadOnlyList<string> Removed, double Saving, double Score);

/// <summary>Chooses which layers to remove so that their savings reach a target at the least total score.</summary>
public static class LayerSelector
{
    /// <summary>Budget units the knapsack discretises the target into; savings are floored and the target ceiled, so the real target is always met.</summary>
    public const int Resolution = 2000;

    /// <param name="needed">The saving to reach, in the items' unit (e.g. 0.3 x the model's parameters).</param>
    /// <exception cref="ArgumentException">The layers cannot save that much even all together.</exception>
    public static LayerChoice Select(IReadOnlyList<LayerItem> items, double needed, LayerSelection selection, int resolution = Resolution)
    {
        ArgumentNullException.ThrowIfNull(items);
        if (!(needed > 0) || !double.IsFinite(needed)) throw new ArgumentException($"The saving to reach must be positive (got {needed}).", nameof(needed));
        foreach (var item in items)
            if (!(item.Saving >= 0) || !double.IsFinite(item.Score))
                throw new ArgumentException($"Layer '{item.Path}' has saving {item.Saving} and score {item.Score}; both must be finite and the saving >= 0.");
        double all = items.Sum(i => i.Saving);
        if (all < needed)
            throw new ArgumentException($"Removing every removable layer ({items.Count}) saves {all:G4}, less than the {needed:G4} asked; lower the target or use a width method.");
        return selection == LayerSelection.Greedy ? Greedy(items, needed) : Knapsack(items, needed, resolution);
    }

    private static LayerChoice Greedy(IReadOnlyList<LayerItem> items, double needed)
    {
        var removed = new List<LayerItem>();
        double saving = 0;
        foreach (var item in items.Where(i => i.Saving > 0).OrderBy(i => Math.Max(i.Score, 0) / i.Saving).ThenBy(i => i.Path, StringComparer.Ordinal))
        {
            if (saving >= needed) break;
            removed.Add(item);
            saving += item.Saving;
        }
        return Choice(removed);
    }

    /// <summary>
    /// Covering knapsack: cost[i, j] = least score of a subset of the first i layers whose discretised saving is at least j
    /// (j up to the target C), O(n x C).
    /// Savings are floored to units of needed / resolution and C is ceiled, so any subset the table accepts meets the real target.
    /// </summary>
    private static LayerChoice Knapsack(IReadOnlyList<LayerItem> items, double needed, int resolution)
    {
        if (resolution < 1) throw new ArgumentOutOfRangeException(nameof(resolution));
        // Integer savings with a target within the resolution are used as they are (exact); otherwise they are scaled.
        double unit = needed <= resolution && items.All(i => i.Saving == Math.Floor(i.Saving)) ? 1 : needed / resolution;
        int capacity = (int)Math.Ceiling(needed / unit - 1e-9);
        var weights = items.Select(i => (int)Math.Min(capacity, Math.Floor(i.Saving / unit + 1e-9))).ToArray();
        if (weights.Sum(w => (long)w) < capacity)
        {
            // Flooring lost just enough to miss the target: every layer is needed.
            return Choice(items.ToList());
        }
        int n = items.Count;
        // cost[i, j]: least score using items[0..i) reaching at least j.
        var cost = new double[n + 1, capacity + 1];
        for (int j = 1; j <= capacity; j++) cost[0, j] = double.PositiveInfinity;
        for (int i = 1; i <= n; i++)
            for (int j = 0; j <= capacity; j++)
            {
                double without = cost[i - 1, j];
                double with = cost[i - 1, Math.Max(0, j - weights[i - 1])] + items[i - 1].Score;
                cost[i, j] = Math.Min(without, with);
            }
        var chosen = new List<int>();
        for (int i = n, j = capacity; i > 0; i--)
        {
            if (cost[i, j] == cost[i - 1, j]) continue;
            chosen.Add(i - 1);
            j = Math.Max(0, j - weights[i - 1]);
        }
        return Choice(chosen.Select(i => items[i]).ToList());
    }

    private static LayerChoice Choice(List<LayerItem> removed) =>
        new(removed.Select(i => i.Path).Order(StringComparer.Ordinal).ToArray(), removed.Sum(i => i.Saving), removed.Sum(i => i.Score));
}
