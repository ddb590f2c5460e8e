using System.Globalization;

namespace DiffusionPrune.Batch;

/// <summary>Which share of a plan's items one worker runs: item i (0-based, plan order) belongs to shard (i mod N) + 1.</summary>
public sealed record BatchShard(int Index, int Count)
{
    /// <summary>"2/4": the second of four shards.</summary>
    public static BatchShard Parse(string text)
    {
        var parts = text.Split('/');
        if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int index)
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int count) || count < 1 || index < 1 || index > count)
            throw new BatchPlanException($"--shard must be i/N with 1 <= i <= N (e.g. 2/4), not '{text}'.");
        return new BatchShard(index, count);
    }

    public bool Contains(int itemIndex) => itemIndex % Count == Index - 1;

    public override string ToString() => $"{Index}/{Count}";
}
