using DiffusionPrune.Models;

namespace DiffusionPrune.Pruning.Importance;

/// <summary>
/// The magnitude baseline: a unit's L1 norm over all the weights it owns — every coupled tensor's slices
/// for that unit (a ResNet channel's conv1 row and bias, norm2 scale and shift, time_emb_proj row(s) and
/// conv2 column; a head's q/k/v rows and biases and to_out columns; a neuron's net.0.proj row and net.2 column).
/// <para>
/// Raw L1 is not comparable across layers of different fan-in (a unit with more weights has a larger
/// norm at the same weight scale), so by default the L1 is divided by the group's parameters per unit
/// (<see cref="UnitNormalization.PerParameter"/>): the score is the unit's mean |w|. This is a per-group
/// constant, so the order within a group is the plain L1 order; a global ranking (with the selector's
/// per-layer minimum) then compares mean weight sizes.
/// </para>
/// </summary>
public sealed class MagnitudeImportance(UnitNormalization normalization = UnitNormalization.PerParameter) : IImportanceCriterion
{
    public string Name => "magnitude";
    public UnitNormalization Normalization { get; } = normalization;

    public UnitScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context)
    {
        var scores = new UnitScores();
        foreach (var group in groups.Units)
            scores[group.Path] = UnitSums.Normalize(group, UnitSums.Of(group, c => c.Tensor.detach().abs()), Normalization);
        return scores;
    }
}
