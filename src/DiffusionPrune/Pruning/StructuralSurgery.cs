using DiffusionPrune.Families;
using DiffusionPrune.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>
/// The one surgery every criterion's plan goes through: build a new, dense, smaller model whose config
/// records the new widths and removed layers (<see cref="ModelStructure"/>), then copy the weights,
/// keeping the planned rows/columns of every coupled tensor and everything else unchanged.
/// The result's outputs equal the original's with the plan applied as 0/1 gates (<see cref="MaskedModel"/>).
/// </summary>
public static class StructuralSurgery
{
    /// <summary>Returns a new pruned model; <paramref name="model"/> is left untouched. Works on already pruned models.</summary>
    public static DiffusionModel Apply(DiffusionModel model, PruningPlan plan)
    {
        var groups = PrunableGroups.Of(model);
        plan.Validate(groups);

        // 1. the new structure: old widths, overwritten by the plan; widths of removed layers dropped.
        var structure = model.Structure.Clone();
        foreach (var (path, kept) in plan.Keep)
        {
            switch (groups.Unit(path))
            {
                case ResnetChannelGroup: structure.ResnetInnerChannels[path] = kept.Length; break;
                case AttentionHeadGroup: structure.AttentionHeads[path] = kept.Length; break;
                case FeedForwardGroup or GegluFeedForwardGroup: structure.FeedForwardInner[path] = kept.Length; break;
                default: throw new InvalidOperationException($"No structure entry for group '{path}'.");
            }
        }
        foreach (var layer in plan.RemovedLayers)
        {
            structure.RemovedLayers.Add(layer);
            foreach (var map in new[] { structure.ResnetInnerChannels, structure.AttentionHeads, structure.FeedForwardInner })
                foreach (var key in map.Keys.Where(k => k == layer || k.StartsWith(layer + ".", StringComparison.Ordinal)).ToList())
                    map.Remove(key);
        }

        // 2. the new model, built from the config alone (so it reloads from config.json + safetensors).
        DiffusionModel pruned = ModelFamilies.Of(model).WithStructure(model, structure);

        // 3. weights: index_select the kept rows/columns of coupled tensors, copy the rest.
        var slices = new Dictionary<string, List<(int dim, long[] indices)>>(StringComparer.Ordinal);
        foreach (var (path, kept) in plan.Keep)
            foreach (var coupled in groups.Unit(path)!.Coupled)
            {
                if (!slices.TryGetValue(coupled.Key, out var list)) slices[coupled.Key] = list = [];
                list.Add((coupled.Dim, coupled.Indices(kept)));
            }
        var device = model.parameters().FirstOrDefault()?.device ?? CPU;
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            var oldState = model.state_dict();
            var weights = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            foreach (var key in pruned.state_dict().Keys)
            {
                if (!oldState.TryGetValue(key, out var value))
                    throw new InvalidOperationException($"The pruned model has tensor '{key}', which the original lacks.");
                value = value.to(CPU);
                if (slices.TryGetValue(key, out var list))
                    foreach (var (dim, indices) in list)
                        value = value.index_select(dim, tensor(indices, ScalarType.Int64));
                weights[key] = value;
            }
            DiffusersModelLoader.LoadStrict(pruned, weights, "structural surgery");
        }
        pruned.train(model.training);
        if (device.type != DeviceType.CPU) pruned.to(device);
        return pruned;
    }

    /// <summary>
    /// Exactly the parameters <see cref="Apply"/> removes: original.ParameterCount() - pruned.ParameterCount().
    /// Removed layers count whole (less a DiT block 0's kept norm1.emb); narrowed groups count their coupled rows/columns.
    /// </summary>
    public static long RemovedParameters(DiffusionModel model, PruningPlan plan) => RemovedParameters(PrunableGroups.Of(model), plan);

    public static long RemovedParameters(PrunableGroups groups, PruningPlan plan)
    {
        plan.Validate(groups);
        long removed = 0;
        foreach (var (path, kept) in plan.Keep) removed += groups.Unit(path)!.RemovedParameters(kept);
        foreach (var path in plan.RemovedLayers) removed += groups.Layer(path)!.RemovedParameters;
        return removed;
    }
}
