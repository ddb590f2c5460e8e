using DiffusionPrune.Data;
using DiffusionPrune.Models;

namespace DiffusionPrune.Pruning.Importance;

/// <summary>
/// The random baseline: each unit gets a uniform score in [0, 1). Each group draws from its own
/// SplitMix64 generator seeded with (context.Seed, FNV-1a hash of the group path), so a group's scores
/// depend only on the seed and its path — not on the other groups, the machine or the .NET version.
/// </summary>
public sealed class RandomImportance : IImportanceCriterion
{
    public string Name => "random";

    public UnitScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context)
    {
        var scores = new UnitScores();
        foreach (var group in groups.Units)
        {
            var rng = new SplitMix64(unchecked((ulong)context.Seed * 0x9E3779B97F4A7C15UL) ^ Fnv1a(group.Path));
            // 24 random bits: exactly representable as a float in [0, 1).
            scores[group.Path] = Enumerable.Range(0, group.Units).Select(_ => (rng.Next() >> 40) / (float)(1 << 24)).ToArray();
        }
        return scores;
    }

    private static ulong Fnv1a(string text)
    {
        ulong hash = 0xCBF29CE484222325UL;
        foreach (char c in text)
        {
            hash ^= c;
            hash *= 0x100000001B3UL;
        }
        return hash;
    }
}
