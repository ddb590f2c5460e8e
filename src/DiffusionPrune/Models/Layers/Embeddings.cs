using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models.Layers;

/// <summary>Sinusoidal timestep features, as diffusers' <c>get_timestep_embedding</c> (float32 throughout).</summary>
public static class TimestepFeatures
{
    public static Tensor Sinusoidal(Tensor timesteps, int embeddingDim, bool flipSinToCos, double downscaleFreqShift, double scale = 1, double maxPeriod = 10000)
    {
        // timesteps: [N] of any numeric dtype -> [N, embeddingDim]
        int halfDim = embeddingDim / 2;
        using var scope = NewDisposeScope();
        var frequencies = Frequencies(embeddingDim, downscaleFreqShift, maxPeriod, timesteps.device);
        var emb = timesteps.to_type(ScalarType.Float32).unsqueeze(1) * frequencies.unsqueeze(0);
        if (scale != 1) emb = emb * (float)scale;
        emb = cat([sin(emb), cos(emb)], -1);
        if (flipSinToCos)
            emb = cat([emb[.., halfDim..], emb[.., ..halfDim]], -1);
        if (embeddingDim % 2 == 1)
            emb = nn.functional.pad(emb, [0, 1, 0, 0]);
        return emb.MoveToOuterDisposeScope();
    }

    /// <summary>The embeddingDim / 2 frequencies the timesteps are multiplied by (float32; the ONNX exporter stores these same values).</summary>
    public static Tensor Frequencies(int embeddingDim, double downscaleFreqShift, double maxPeriod = 10000, Device? device = null)
    {
        int halfDim = embeddingDim / 2;
        using var scope = NewDisposeScope();
        var exponent = arange(0, halfDim, dtype: ScalarType.Float32, device: device) * (float)(-Math.Log(maxPeriod));
        exponent = exponent / (float)(halfDim - downscaleFreqShift);
        return exp(exponent).MoveToOuterDisposeScope();
    }
}

/// <summary>diffusers' <c>TimestepEmbedding</c>: linear_1, activation, linear_2, and an optional activation after it (post_act_fn).</summary>
public sealed class TimestepEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly Linear linear_1;
    private readonly Linear linear_2;
    private readonly string _act;
    private readonly string? _postAct;

    /// <param name="postAct">diffusers' <c>post_act_fn</c> (UNet2DConditionModel's <c>timestep_post_act</c>); null for none.</param>
    public TimestepEmbedding(int inChannels, int timeEmbedDim, string act = "silu", string? postAct = null) : base(nameof(TimestepEmbedding))
    {
        linear_1 = nn.Linear(inChannels, timeEmbedDim);
        linear_2 = nn.Linear(timeEmbedDim, timeEmbedDim);
        _act = act;
        _postAct = postAct;
        RegisterComponents();
    }

    public Linear Linear1 => linear_1;
    public Linear Linear2 => linear_2;
    public string Act => _act;
    public string? PostAct => _postAct;

    public override Tensor forward(Tensor sample)
    {
        var embedded = linear_2.call(Activations.Apply(_act, linear_1.call(sample)));
        return _postAct is null ? embedded : Activations.Apply(_postAct, embedded);
    }
}

/// <summary>diffusers' <c>GaussianFourierProjection</c> as UNet2DModel builds it (log=True, flip_sin_to_cos=False).</summary>
public sealed class GaussianFourierProjection : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly bool _log;
    private readonly bool _flipSinToCos;

    public GaussianFourierProjection(int embeddingSize, double scale = 16, bool log = true, bool flipSinToCos = false) : base(nameof(GaussianFourierProjection))
    {
        weight = new Parameter(randn(embeddingSize) * (float)scale, requires_grad: false);
        _log = log;
        _flipSinToCos = flipSinToCos;
        RegisterComponents();
    }

    public Parameter Weight => weight;
    public bool Log => _log;
    public bool FlipSinToCos => _flipSinToCos;

    public override Tensor forward(Tensor x)
    {
        var t = x.to_type(ScalarType.Float32);
        if (_log) t = torch.log(t);
        var projection = t.unsqueeze(1) * weight.unsqueeze(0) * (float)(2 * Math.PI);
        return _flipSinToCos ? cat([cos(projection), sin(projection)], -1) : cat([sin(projection), cos(projection)], -1);
    }
}
