namespace DiffusionPrune.Pruning;

/// <summary>Criteria by name (command line, reports). To add one, add a line to <see cref="Factories"/>.</summary>
public static class ImportanceCriteria
{
    private static readonly IReadOnlyDictionary<string, Func<IImportanceCriterion>> Factories =
        new Dictionary<string, Func<IImportanceCriterion>>(StringComparer.OrdinalIgnoreCase)
        {
            ["random"] = () => new RandomImportance(),
            ["magnitude"] = () => new MagnitudeImportance(),
            ["taylor"] = () => new TaylorImportance(),
            ["ecodiff"] = () => new EcoDiffPruner(),
        };

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
