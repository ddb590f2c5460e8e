using DiffusionPrune.Models;

namespace DiffusionPrune.Pruning.Layers;

/// <summary>
/// EcoDiff's learned unit masks as a layer score: the masks are learned over the sampling trajectory as for a width
/// prune, then each layer scores its removable parameters times the parameter-weighted mean keep probability
/// P(gate != 0) of the units inside it (<see cref="Aggregate"/>). A layer whose units EcoDiff closed costs nothing to
/// remove; one it kept open costs its size, so the knapsack removes the layers EcoDiff already emptied.
/// </summary>
public sealed class EcoDiffLayerCriterion(EcoDiffImportance? ecoDiff = null) : ILayerCriterion
{
    public string Name => "ecodiff-layer";

    /// <summary>The mask learning (its options and, after <see cref="Score"/>, its history).</summary>
    public EcoDiffImportance EcoDiff { get; } = ecoDiff ?? new EcoDiffImportance();

    /// <summary>The per-unit logits of the last <see cref="Score"/> call.</summary>
    public UnitScores? UnitScores { get; private set; }

    public LayerScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context, LayerTarget? target = null)
    {
        LayerCriterion.Check(model, groups);
        UnitScores = EcoDiff.Score(model, groups, context);
        var scores = Aggregate(groups, UnitScores, EcoDiff.Options.GateMode);
        foreach (var (path, score) in scores.ByLayer)
        {
            long size = groups.Layers.First(l => l.Path == path).RemovedParameters;
            context.Log?.Invoke($"ecodiff-layer: {path} expected kept {score / Math.Max(1, size):P1} of {size:N0} parameters");
        }
        return scores;
    }

    /// <summary>
    /// Each layer's score: its <see cref="LayerGroup.RemovedParameters"/> times the mean keep probability of the units
    /// inside it, weighted by their parameters per unit. Units without a logit (types EcoDiff did not gate) count as
    /// kept, and so does a layer without units: it scores its whole size.
    /// </summary>
    public static LayerScores Aggregate(PrunableGroups groups, UnitScores logits, GateMode mode = GateMode.HardConcrete)
    {
        ArgumentNullException.ThrowIfNull(groups);
        ArgumentNullException.ThrowIfNull(logits);
        var scores = new LayerScores();
        foreach (var layer in groups.Layers)
        {
            double kept = 0, total = 0;
            foreach (var group in groups.Units.Where(g => g.IsWithin(layer.Path)))
            {
                double weight = group.ParametersPerUnit;
                if (logits.ByGroup.TryGetValue(group.Path, out var unitLogits))
                {
                    if (unitLogits.Length != group.Units)
                        throw new ArgumentException($"'{group.Path}' has {group.Units} units but {unitLogits.Length} logits.", nameof(logits));
                    foreach (float logit in unitLogits)
                    {
                        if (!float.IsFinite(logit)) throw new ArgumentException($"'{group.Path}' has a non-finite logit ({logit}).", nameof(logits));
                        kept += weight * HardConcreteGate.KeepProbability(logit, mode);
                    }
                }
                else kept += weight * group.Units;
                total += weight * group.Units;
            }
            scores[layer.Path] = layer.RemovedParameters * (total > 0 ? kept / total : 1.0);
        }
        return scores;
    }
}
