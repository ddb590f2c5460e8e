using DiffusionPrune.Models;
using DiffusionPrune.Schedulers;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning.Layers;

/// <summary>What removing each layer costs (layer path -> score; higher = keep), and what the criterion measured besides.</summary>
public sealed class LayerScores
{
    public SortedDictionary<string, double> ByLayer { get; } = new(StringComparer.Ordinal);

    /// <summary>LAPTOP's additivity check: predicted (sum of single-layer losses) against measured loss of random subsets.</summary>
    public AdditivityCheck? Additivity { get; set; }

    /// <summary>A criterion that chooses the layers itself (learnable depth) sets them here; the others leave selection to <see cref="LayerSelector"/>.</summary>
    public IReadOnlyList<string>? Chosen { get; set; }

    /// <summary>Learnable depth: the most probable layer sets at the end of training, with their probabilities.</summary>
    public IReadOnlyList<(IReadOnlyList<string> Layers, double Probability)>? LearnedSets { get; set; }

    public double this[string path]
    {
        get => ByLayer[path];
        set => ByLayer[path] = value;
    }
}

/// <summary>What a layer prune must reach: each layer's saving in the budget's unit and the total saving needed.</summary>
public sealed record LayerTarget(LayerCostTable Costs, double Needed);

/// <summary>One subset of the additivity check.</summary>
public sealed record AdditivitySample(IReadOnlyList<string> Layers, double Predicted, double Measured);

/// <summary>
/// The additivity check over random subsets: Pearson's r (what LAPTOP reports) and Spearman's rank rho (robust to a
/// single dominant layer, which makes r close to 1 on its own); each null with fewer than three subsets or no spread.
/// </summary>
public sealed record AdditivityCheck(IReadOnlyList<AdditivitySample> Samples, double? PearsonR, double? SpearmanRho);

/// <summary>A layer criterion: a score per removable layer (higher = keep). <see cref="LayerSelector"/> turns scores into a plan.</summary>
public interface ILayerCriterion
{
    /// <summary>Name used on the command line and in reports: laptop | ldpruner | random-layer | learnable-depth.</summary>
    string Name { get; }

    /// <param name="target">The budget; criteria that choose the layers themselves need it, the others ignore it.</param>
    LayerScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context, LayerTarget? target = null);
}

/// <summary>
/// LAPTOP-Diff's one-shot criterion: the output loss c_i = E ||eps_full - eps_without_i||^2 over the calibration noises
/// and every step of the full model's trajectory, plus the additivity check that justifies selecting by sums of c_i.
/// </summary>
public sealed class LaptopCriterion(int additivitySubsets = 20) : ILayerCriterion
{
    public string Name => "laptop";

    /// <summary>Random subsets measured for the additivity check (at least 20 by default; fewer only if the model has fewer distinct subsets).</summary>
    public int AdditivitySubsets { get; } = additivitySubsets >= 0 ? additivitySubsets
        : throw new ArgumentOutOfRangeException(nameof(additivitySubsets), "The number of additivity subsets cannot be negative.");

    public LayerScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context, LayerTarget? target = null)
    {
        LayerCriterion.Check(model, groups);
        using var scheduler = Scheduler.FromFile(context.SchedulerConfigPath, context.SchedulerName ?? "ddim");
        using var calibration = new LayerCalibration(model, scheduler, context.Steps, context.CalibrationSamples, context.Seed, context.CalibrationText);
        var scores = new LayerScores();
        int done = 0;
        foreach (var layer in groups.Layers)
        {
            scores[layer.Path] = calibration.OutputLoss([layer], context.Cancellation);
            context.Log?.Invoke($"laptop: {++done}/{groups.Layers.Count} {layer.Path} output loss {scores[layer.Path]:G4}");
        }
        var samples = new List<AdditivitySample>();
        foreach (var subset in LayerCriterion.RandomSubsets(groups.Layers, AdditivitySubsets, context.Seed))
        {
            double predicted = subset.Sum(l => scores[l.Path]);
            double measured = calibration.OutputLoss(subset, context.Cancellation);
            samples.Add(new AdditivitySample(subset.Select(l => l.Path).ToArray(), predicted, measured));
        }
        double[] predictedAll = samples.Select(s => s.Predicted).ToArray(), measuredAll = samples.Select(s => s.Measured).ToArray();
        double? r = samples.Count >= 3 ? Statistics.PearsonR(predictedAll, measuredAll) : null;
        double? rho = samples.Count >= 3 ? Statistics.SpearmanRho(predictedAll, measuredAll) : null;
        scores.Additivity = new AdditivityCheck(samples, r, rho);
        context.Log?.Invoke(r is double value
            ? $"laptop: additivity Pearson r = {value:F3}, Spearman rho = {rho:F3} over {samples.Count} random layer subsets (predicted sum of single-layer losses vs measured)"
            : $"laptop: additivity not measured ({samples.Count} subsets; the model has too few removable layers)");
        return scores;
    }
}

/// <summary>
/// LD-Pruner's latent criterion, for whole layers: sample final latents from fixed noise with the layer removed;
/// score = ||mean(L_full) - mean(L_without)||_2 + ||std(L_full) - std(L_without)||_2, statistics over the sample axis.
/// </summary>
public sealed class LdPrunerCriterion : ILayerCriterion
{
    public string Name => "ldpruner";

    public LayerScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context, LayerTarget? target = null)
    {
        LayerCriterion.Check(model, groups);
        using var scheduler = Scheduler.FromFile(context.SchedulerConfigPath, context.SchedulerName ?? "ddim");
        using var calibration = new LayerCalibration(model, scheduler, context.Steps, context.CalibrationSamples, context.Seed, context.CalibrationText);
        using var meanFull = calibration.Final.mean([0]);
        using var stdFull = calibration.Final.std(0);
        var scores = new LayerScores();
        int done = 0;
        foreach (var layer in groups.Layers)
        {
            using var scope = NewDisposeScope();
            var latents = calibration.FinalLatents([layer], context.Cancellation);
            double shift = (meanFull - latents.mean([0])).norm().item<float>() + (stdFull - latents.std(0)).norm().item<float>();
            scores[layer.Path] = shift;
            context.Log?.Invoke($"ldpruner: {++done}/{groups.Layers.Count} {layer.Path} latent shift {shift:G4}");
        }
        return scores;
    }
}

/// <summary>Baseline: seeded uniform scores, so the selection removes a random set of layers that meets the budget.</summary>
public sealed class RandomLayerCriterion : ILayerCriterion
{
    public string Name => "random-layer";

    public LayerScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context, LayerTarget? target = null)
    {
        LayerCriterion.Check(model, groups);
        var random = new Random(unchecked((int)(context.Seed ^ (context.Seed >> 32))));
        var scores = new LayerScores();
        foreach (var layer in groups.Layers) scores[layer.Path] = random.NextDouble();
        return scores;
    }
}

internal static class LayerCriterion
{
    public static void Check(DiffusionModel model, PrunableGroups groups)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(groups);
        if (!ReferenceEquals(groups.Model, model)) throw new ArgumentException("The groups belong to a different model.", nameof(groups));
        if (groups.Layers.Count == 0) throw new ArgumentException($"{model.ClassName} has no removable layers; use a width method (ecodiff, taylor, magnitude, random).");
        Runtime.NumericsGuard.RequireHealthy();
    }

    /// <summary>
    /// Up to <paramref name="count"/> distinct seeded subsets of 2 to ceil(L/2) layers (the sizes a layer prune removes),
    /// fewer only when the model has fewer distinct subsets of those sizes.
    /// </summary>
    public static IReadOnlyList<IReadOnlyList<LayerGroup>> RandomSubsets(IReadOnlyList<LayerGroup> layers, int count, long seed)
    {
        int n = layers.Count, maxSize = Math.Max(2, (n + 1) / 2);
        var result = new List<IReadOnlyList<LayerGroup>>();
        if (n < 2 || count == 0) return result;
        double available = Enumerable.Range(2, maxSize - 1).Sum(k => Binomial(n, k));
        int target = (int)Math.Min(count, available);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var random = new Random(unchecked((int)(seed * 31 + 17)));
        while (result.Count < target)
        {
            int size = random.Next(2, maxSize + 1);
            var subset = Enumerable.Range(0, n).OrderBy(_ => random.Next()).Take(size).Order().ToArray();
            if (seen.Add(string.Join(",", subset))) result.Add(subset.Select(i => layers[i]).ToArray());
        }
        return result;
    }

    private static double Binomial(int n, int k)
    {
        double c = 1;
        for (int i = 1; i <= k; i++) c = c * (n - k + i) / i;
        return c;
    }
}

/// <summary>Small statistics shared by the layer criteria.</summary>
public static class Statistics
{
    /// <summary>Pearson's correlation coefficient; null when either series has no spread.</summary>
    public static double? PearsonR(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException("Both series must have the same length.");
        if (x.Count < 2) return null;
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Count; i++)
        {
            sxy += (x[i] - mx) * (y[i] - my);
            sxx += (x[i] - mx) * (x[i] - mx);
            syy += (y[i] - my) * (y[i] - my);
        }
        return sxx > 0 && syy > 0 ? sxy / Math.Sqrt(sxx * syy) : null;
    }

    /// <summary>Spearman's rank correlation (Pearson's r of the ranks, ties given their mean rank).</summary>
    public static double? SpearmanRho(IReadOnlyList<double> x, IReadOnlyList<double> y) => PearsonR(Ranks(x), Ranks(y));

    private static double[] Ranks(IReadOnlyList<double> values)
    {
        var order = Enumerable.Range(0, values.Count).OrderBy(i => values[i]).ToArray();
        var ranks = new double[values.Count];
        for (int start = 0; start < order.Length;)
        {
            int end = start;
            while (end + 1 < order.Length && values[order[end + 1]] == values[order[start]]) end++;
            for (int k = start; k <= end; k++) ranks[order[k]] = (start + end) / 2.0 + 1;
            start = end + 1;
        }
        return ranks;
    }
}
