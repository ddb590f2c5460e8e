namespace DiffusionPrune.Pruning.Importance;

/// <summary>
/// The one registry of pruning methods, by name: the CLI's help and validation, batch plans and the Studio all read it.
/// To add a method, add a line to <see cref="Entries"/>.
/// </summary>
public static class ImportanceCriteria
{
    /// <summary>A method: its name, what it does in one line, and a factory for its criterion with default settings.</summary>
    /// <param name="UsesImages">It calibrates on images (<c>--data</c>); the others are data-free.</param>
    public sealed record Entry(string Name, string Description, Func<IImportanceCriterion> Create, bool UsesImages = false);

    private static readonly IReadOnlyList<Entry> Entries =
    [
        new("ecodiff", "EcoDiff: differentiable masks learned over the whole sampling trajectory (no retraining)", () => new EcoDiffPruner()),
        new("magnitude", "baseline: L1 norm of each unit's weights", () => new MagnitudeImportance()),
        new("random", "baseline: seeded random scores", () => new RandomImportance()),
        new("taylor", "baseline: first-order Taylor |w * dL/dw| of the denoising loss on calibration images", () => new TaylorImportance(), UsesImages: true),
    ];

    private static readonly IReadOnlyDictionary<string, Func<IImportanceCriterion>> Factories =
        Entries.ToDictionary(e => e.Name, e => e.Create, StringComparer.OrdinalIgnoreCase);

    /// <summary>Every method with its description, sorted by name.</summary>
    public static IReadOnlyList<Entry> All => Entries.OrderBy(e => e.Name, StringComparer.Ordinal).ToArray();

    /// <summary>The entry of <paramref name="name"/> (case-insensitive), or null.</summary>
    public static Entry? Find(string name) => Entries.FirstOrDefault(e => string.Equals(e.Name, name.Trim(), StringComparison.OrdinalIgnoreCase));

    /// <summary>Known names, sorted.</summary>
    public static IReadOnlyList<string> Names => Factories.Keys.Order(StringComparer.Ordinal).ToArray();

    /// <summary>A new criterion with its default settings; names are case-insensitive.</summary>
    /// <exception cref="ArgumentException">No criterion of that name (the message lists the known ones).</exception>
    public static IImportanceCriterion Create(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return Factories.TryGetValue(name.Trim(), out var factory)
            ? factory()
            : throw new ArgumentException($"Unknown importance criterion '{name}'. Known criteria: {string.Join(", ", Names)}.", nameof(name));
    }
}
