using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Training;

/// <summary>
/// AdamW (decoupled weight decay, bias-corrected moments) with its state as plain named tensors, so a
/// checkpoint is just a safetensors file and a resumed run continues bit for bit.
/// </summary>
public sealed class AdamW : IDisposable
{
    private readonly (string name, Parameter param)[] _params;
    private readonly Dictionary<string, Tensor> _m = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Tensor> _v = new(StringComparer.Ordinal);

    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    public double WeightDecay { get; init; } = 0.0;
    public long StepCount { get; private set; }

    public AdamW(IEnumerable<(string name, Parameter param)> parameters)
    {
        _params = parameters.Where(p => p.param.requires_grad).ToArray();
        foreach (var (name, p) in _params)
        {
            _m[name] = zeros_like(p).DetachFromDisposeScope();
            _v[name] = zeros_like(p).DetachFromDisposeScope();
        }
    }

    public void ZeroGrad()
    {
        foreach (var (_, p) in _params) p.grad?.zero_();
    }

    /// <summary>Scales gradients so their global L2 norm is at most <paramref name="maxNorm"/>; returns the norm before clipping.</summary>
    public double ClipGradNorm(double maxNorm)
    {
        using var scope = NewDisposeScope();
        var grads = _params.Select(p => p.param.grad).Where(g => g is not null).ToList();
        if (grads.Count == 0) return 0;
        double total = Math.Sqrt(grads.Sum(g => g!.pow(2).sum().item<float>()));
        if (total > maxNorm && total > 0)
        {
            float factor = (float)(maxNorm / (total + 1e-6));
            foreach (var g in grads) g!.mul_(factor);
        }
        return total;
    }

    public void Step(double learningRate)
    {
        StepCount++;
        double bias1 = 1 - Math.Pow(Beta1, StepCount);
        double bias2 = 1 - Math.Pow(Beta2, StepCount);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        foreach (var (name, p) in _params)
        {
            var g = p.grad;
            if (g is null) continue;
            if (WeightDecay > 0) p.mul_(1 - learningRate * WeightDecay);
            var m = _m[name];
            var v = _v[name];
            m.mul_(Beta1).add_(g, alpha: 1 - Beta1);
            v.mul_(Beta2).addcmul_(g, g, value: 1 - Beta2);
            var denominator = (v / bias2).sqrt_().add_(Eps);
            p.addcdiv_(m, denominator, value: -learningRate / bias1);
        }
    }

    public Dictionary<string, Tensor> StateTensors()
    {
        var state = new Dictionary<string, Tensor>(StringComparer.Ordinal) { ["__step__"] = tensor(StepCount) };
        foreach (var (name, _) in _params)
        {
            state["m." + name] = _m[name];
            state["v." + name] = _v[name];
        }
        return state;
    }

    public void LoadState(IReadOnlyDictionary<string, Tensor> state)
    {
        using var noGrad = no_grad();
        StepCount = state["__step__"].item<long>();
        foreach (var (name, _) in _params)
        {
            if (!state.TryGetValue("m." + name, out var m) || !state.TryGetValue("v." + name, out var v))
                throw new InvalidDataException($"The optimizer checkpoint has no state for parameter '{name}'.");
            _m[name].copy_(m);
            _v[name].copy_(v);
        }
    }

    public void Dispose()
    {
        foreach (var t in _m.Values.Concat(_v.Values)) t.Dispose();
    }
}
