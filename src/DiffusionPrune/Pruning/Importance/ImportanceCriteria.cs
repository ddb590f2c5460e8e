using DiffusionPrune.Pruning.Layers;

namespace DiffusionPrune.Pruning.Importance;

/// <summary>What a method's scoring holds in memory (besides the model and its pruned copy).</summary>
public enum PruneWorkload
{
    /// <summary>Nothing but the weights (magnitude, random).</summary>
    WeightsOnly,

    /// <summary>Forward passes over a batch of calibration noises (LAPTOP, LD-Pruner).</summary>
    Forward,

    /// <summary>Gradients with respect to the weights over calibration images (Taylor).</summary>
    Gradients,

    /// <summary>Masks learned over the sampling trajectory with time-step gradient checkpointing (EcoDiff).</summary>
    MaskLearning,

    /// <summary>A weight copy trained with AdamW beside the masks (learnable depth).</summary>
    Training,
}

/// <summary>
/// The one registry of pruning methods, by name: the CLI's help and validation, batch plans and the Studio all read it.
/// To add a method, add a line to <see cref="Entries"/>.
/// </summary>
public static class ImportanceCriteria
{
    /// <summary>
    /// A method: its name, what it does in one line, and a factory for its criterion with default settings: a width
    /// criterion (<see cref="Create"/>, scores units) or a layer criterion (<see cref="CreateLayers"/>, scores whole layers).
    /// </summary>
    /// <param name="UsesImages">
    /// It calibrates on images (<c>--data</c>), or on a Stable Diffusion pipeline on latents the pipeline samples from its
    /// calibration prompts (<see cref="Training.TeacherSamples"/>); the others are data-free.
    /// </param>
    /// <param name="Workload">What its scoring holds in memory, for the resource check before it starts.</param>
    public sealed record Entry(string Name, string Description, Func<IImportanceCriterion>? Create, bool UsesImages = false, Func<ILayerCriterion>? CreateLayers = null,
        PruneWorkload Workload = PruneWorkload.Forward)
    {
        /// <summary>It removes whole layers (depth pruning) rather than narrowing them.</summary>
        public bool RemovesLayers => CreateLayers is not null;
    }

    private static readonly IReadOnlyList<Entry> Entries =
    [
        new("laptop", "LAPTOP-Diff: remove whole layers by their one-shot output loss, chosen by knapsack under a params, MACs or latency budget", null,
            CreateLayers: () => new LaptopCriterion()),
        new("ldpruner", "LD-Pruner: remove whole layers by the shift of the final latents' mean and std", null, CreateLayers: () => new LdPrunerCriterion()),
        new("learnable-depth", "TinyFusion-style: learn which whole layers to remove jointly with a short recovery update of the weights, on calibration images (a Stable Diffusion pipeline: its own samples from prompts)", null,
            UsesImages: true, CreateLayers: () => new LearnableDepthCriterion(), Workload: PruneWorkload.Training),
        new("random-layer", "baseline: remove a seeded random set of whole layers that meets the budget", null, CreateLayers: () => new RandomLayerCriterion(),
            Workload: PruneWorkload.WeightsOnly),
        new("ecodiff-layer", "EcoDiff's learned unit masks aggregated per layer: remove the whole layers whose units EcoDiff keeps least", null,
            CreateLayers: () => new EcoDiffLayerCriterion(), Workload: PruneWorkload.MaskLearning),
        new("ecodiff", "EcoDiff: differentiable masks learned over the whole sampling trajectory (no retraining)", () => new EcoDiffImportance(), Workload: PruneWorkload.MaskLearning),
        new("magnitude", "baseline: L1 norm of each unit's weights", () => new MagnitudeImportance(), Workload: PruneWorkload.WeightsOnly),
        new("random", "baseline: seeded random scores", () => new RandomImportance(), Workload: PruneWorkload.WeightsOnly),
        new("taylor", "baseline: first-order Taylor |w * dL/dw| of the denoising loss on calibration images (a Stable Diffusion pipeline: its own samples from prompts)", () => new TaylorImportance(), UsesImages: true, Workload: PruneWorkload.Gradients),
    ];

    private static readonly IReadOnlyDictionary<string, Entry> ByName = Entries.ToDictionary(e => e.Name, StringComparer.OrdinalIgnoreCase);

    /// <summary>Every method with its description, sorted by name.</summary>
    public static IReadOnlyList<Entry> All => Entries.OrderBy(e => e.Name, StringComparer.Ordinal).ToArray();

    /// <summary>The entry of <paramref name="name"/> (case-insensitive), or null.</summary>
    public static Entry? Find(string name) => Entries.FirstOrDefault(e => string.Equals(e.Name, name.Trim(), StringComparison.OrdinalIgnoreCase));

    /// <summary>Known names, sorted.</summary>
    public static IReadOnlyList<string> Names => ByName.Keys.Order(StringComparer.Ordinal).ToArray();

    /// <summary>A new width criterion with its default settings; names are case-insensitive.</summary>
    /// <exception cref="ArgumentException">No width criterion of that name (the message lists the known ones).</exception>
    public static IImportanceCriterion Create(string name) =>
        Lookup(name).Create?.Invoke() ?? throw new ArgumentException($"'{name}' removes whole layers; it is a layer criterion.", nameof(name));

    /// <summary>A new layer criterion with its default settings; names are case-insensitive.</summary>
    /// <exception cref="ArgumentException">No layer criterion of that name.</exception>
    public static ILayerCriterion CreateLayers(string name) =>
        Lookup(name).CreateLayers?.Invoke() ?? throw new ArgumentException($"'{name}' narrows layers; it is not a layer criterion.", nameof(name));

    private static Entry Lookup(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return ByName.TryGetValue(name.Trim(), out var entry)
            ? entry
            : throw new ArgumentException($"Unknown importance criterion '{name}'. Known criteria: {string.Join(", ", Names)}.", nameof(name));
    }
}
