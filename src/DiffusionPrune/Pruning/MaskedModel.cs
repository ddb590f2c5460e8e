using DiffusionPrune.Models;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>
/// A plan applied as 0/1 gates on the live model (no weights change): kept units gate 1, pruned units 0,
/// removed layers 0. Its outputs equal <see cref="StructuralSurgery.Apply"/>'s pruned model. Dispose
/// (or <see cref="Clear"/>) to remove every gate again.
/// </summary>
public sealed class MaskedModel : IDisposable
{
    private readonly List<Tensor> _masks = [];

    private MaskedModel(DiffusionModel model, PrunableGroups groups)
    {
        Model = model;
        Groups = groups;
    }

    public DiffusionModel Model { get; }
    public PrunableGroups Groups { get; }

    /// <summary>Sets the gates of <paramref name="plan"/> on <paramref name="model"/> (validated first; groups not in the plan stay ungated).</summary>
    public static MaskedModel Apply(DiffusionModel model, PruningPlan plan)
    {
        var groups = PrunableGroups.Of(model);
        plan.Validate(groups);
        var masked = new MaskedModel(model, groups);
        var device = model.parameters().FirstOrDefault()?.device ?? CPU;
        foreach (var (path, kept) in plan.Keep)
        {
            var group = groups.Unit(path)!;
            var values = new float[group.Units];
            foreach (int i in kept) values[i] = 1f;
            group.ApplyMask(masked.Keep(tensor(values).to(device)));
        }
        foreach (var path in plan.RemovedLayers)
            groups.Layer(path)!.ApplyMask(masked.Keep(zeros(1, device: device)));
        return masked;
    }

    private Tensor Keep(Tensor mask)
    {
        mask.DetachFromDisposeScope();
        _masks.Add(mask);
        return mask;
    }

    /// <summary>Removes every gate on the model (also gates set by others) and frees the masks this object made.</summary>
    public void Clear()
    {
        Groups.ClearMasks();
        foreach (var m in _masks) m.Dispose();
        _masks.Clear();
    }

    public void Dispose() => Clear();

    /// <summary>Removes every unit and layer gate from <paramref name="model"/>.</summary>
    public static void ClearAll(DiffusionModel model) => PrunableGroups.Of(model).ClearMasks();
}
