using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Analysis;

/// <summary>Parameters and multiply-accumulates of one named part of a model.</summary>
public sealed record PartCost(string Name, long Parameters, long Macs);

/// <summary>Cost of a model at one input size: MACs are counted from layer shapes seen in a real forward pass.</summary>
public sealed record ModelCostReport(long Parameters, long Macs, int[] SampleSize, IReadOnlyList<PartCost> Parts);

/// <summary>
/// Counts parameters and MACs. MACs come from forward hooks on every convolution and linear layer
/// (output elements x inputs per output) plus the two attention matmuls (2 x heads x queries x keys x head width),
/// for one sample at the model's native size. Norms and activations are not counted (as thop/fvcore do).
/// </summary>
public static class ModelCost
{
    public static ModelCostReport Measure(DiffusionModel model, int[]? sampleSize = null)
    {
        var size = sampleSize ?? model.SampleSize;
        var macsByModule = new Dictionary<nn.Module, long>(ReferenceEqualityComparer.Instance);
        var removers = new List<Action>();
        var names = new Dictionary<nn.Module, string>(ReferenceEqualityComparer.Instance);
        // The attention matmuls are counted from the token counts its to_q and to_k saw (queries x keys), not from a hook
        // on the attention module: a transformer block calls its attentions' three-argument Forward directly (cross-
        // attention to text states), which no forward hook sees.
        var tokensByLinear = new Dictionary<nn.Module, List<long>>(ReferenceEqualityComparer.Instance);
        var attentions = new List<(string name, Attention attention)>();
        foreach (var (name, module) in model.named_modules())
        {
            names[module] = name;
            switch (module)
            {
                case Conv2d conv:
                    var remover_conv = (conv.register_forward_hook((m, input, output) =>
                    {
                        var w = conv.weight!;
                        long perOutput = w.shape[1] * w.shape[2] * w.shape[3];
                        macsByModule[m] = macsByModule.GetValueOrDefault(m) + output.numel() / output.shape[0] * perOutput;
                        return output;
                    }));
                    removers.Add(() => remover_conv.remove());
                    break;
                case Linear linear:
                    var remover_linear = (linear.register_forward_hook((m, input, output) =>
                    {
                        long batch = output.shape[0];
                        macsByModule[m] = macsByModule.GetValueOrDefault(m) + output.numel() / batch * linear.weight!.shape[1];
                        if (!tokensByLinear.TryGetValue(m, out var calls)) tokensByLinear[m] = calls = [];
                        calls.Add(output.numel() / batch / linear.weight!.shape[0]);
                        return output;
                    }));
                    removers.Add(() => remover_linear.remove());
                    break;
                case Attention attention:
                    attentions.Add((name, attention));
                    break;
            }
        }
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var device = model.parameters().FirstOrDefault()?.device ?? CPU;
            var sample = zeros([1, model.InChannels, size[0], size[1]], device: device);
            // Whatever conditioning the model takes (a class index, a ready-made class embedding, nothing), zeroed.
            // Timestep 0 is valid for every time embedding (a learned table may have fewer than 500 rows); values do not matter here.
            model.Forward(sample, ModelFamilies.ConditioningOf(model).Zero(tensor(0L, device: device), 1, device));
        }
        finally
        {
            foreach (var remove in removers) remove();
        }
        foreach (var (_, attention) in attentions)
        {
            if (!tokensByLinear.TryGetValue(attention.ToQ, out var queries) || !tokensByLinear.TryGetValue(attention.ToK, out var keys)) continue;
            for (int call = 0; call < Math.Min(queries.Count, keys.Count); call++)
                macsByModule[attention] = macsByModule.GetValueOrDefault(attention) + 2L * attention.Heads * queries[call] * keys[call] * attention.DimHead;
        }

        // Group by the first two path components (e.g. "down_blocks.1", "transformer_blocks.3", "conv_in").
        static string Part(string name)
        {
            var pieces = name.Split('.');
            return pieces.Length >= 2 && int.TryParse(pieces[1], out _) ? $"{pieces[0]}.{pieces[1]}" : pieces[0];
        }
        var parts = new Dictionary<string, (long parameters, long macs)>();
        var order = new List<string>();
        foreach (var (name, p) in model.named_parameters())
        {
            string part = Part(name);
            if (!parts.ContainsKey(part)) { parts[part] = (0, 0); order.Add(part); }
            parts[part] = (parts[part].parameters + p.numel(), parts[part].macs);
        }
        foreach (var (module, macs) in macsByModule)
        {
            string part = Part(names[module]);
            if (!parts.ContainsKey(part)) { parts[part] = (0, 0); order.Add(part); }
            parts[part] = (parts[part].parameters, parts[part].macs + macs);
        }
        var list = order.Select(p => new PartCost(p, parts[p].parameters, parts[p].macs)).ToList();
        return new ModelCostReport(model.ParameterCount(), macsByModule.Values.Sum(), size, list);
    }
}
