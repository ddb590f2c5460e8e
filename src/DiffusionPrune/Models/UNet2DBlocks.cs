using DiffusionPrune.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>A ResNet block removed by layer pruning: the identity (only valid where in == out channels).</summary>
public sealed class RemovedResnet() : nn.Module<Tensor, Tensor?, Tensor>(nameof(RemovedResnet))
{
    public override Tensor forward(Tensor x, Tensor? temb) => x;
}

/// <summary>An attention block removed by layer pruning: the identity (the block is residual).</summary>
public sealed class RemovedAttention() : nn.Module<Tensor, Tensor>(nameof(RemovedAttention))
{
    public override Tensor forward(Tensor x) => x;
}

/// <summary>
/// Everything a U-Net block needs to build its layers; paths key the pruned widths. <c>TembChannels</c> is null for
/// blocks without a time embedding (AutoencoderKL's encoder and decoder), whose ResNet blocks then have no time_emb_proj.
/// </summary>
public sealed record UNetBlockSettings(
    int? TembChannels, double Eps, string Act, int Groups, string TimeScaleShift, double Dropout, int AttentionHeadDim,
    ModelStructure Structure, string Path)
{
    public nn.Module<Tensor, Tensor?, Tensor> Resnet(string path, int inChannels, int outChannels, double outputScaleFactor = 1.0, bool up = false, bool down = false)
    {
        if (Structure.IsRemoved(path)) return new RemovedResnet();
        return new ResnetBlock2D(inChannels, outChannels, TembChannels, Groups, Eps, TimeScaleShift, Act, outputScaleFactor, Dropout,
            up, down, Structure.ResnetInner(path, outChannels));
    }

    public nn.Module<Tensor, Tensor> UNetAttention(string path, int channels, int? normGroups, double rescaleOutputFactor = 1.0)
    {
        if (Structure.IsRemoved(path)) return new RemovedAttention();
        int heads = Structure.Heads(path, channels / AttentionHeadDim);
        return new Attention(channels, heads, AttentionHeadDim, bias: true, outBias: true, normNumGroups: normGroups, eps: Eps,
            residualConnection: true, rescaleOutputFactor: rescaleOutputFactor);
    }
}

/// <summary>A U-Net down block: ResNet blocks, optional attention after each, optional downsampler.</summary>
public sealed class DownBlock2D : nn.Module
{
    private readonly ModuleList<nn.Module<Tensor, Tensor?, Tensor>> resnets;
    private readonly ModuleList<nn.Module<Tensor, Tensor>>? attentions;
    private readonly ModuleList<nn.Module>? downsamplers;
    private readonly bool _resnetDownsample;

    public string BlockType { get; }

    /// <param name="withAttention">AttnDownBlock2D when true, DownBlock2D otherwise.</param>
    /// <param name="downsampleType">null (no downsampler), "conv" or "resnet". Only AttnDownBlock2D honours "resnet", as in diffusers.</param>
    public DownBlock2D(UNetBlockSettings s, int numLayers, int inChannels, int outChannels, bool withAttention, string? downsampleType, int downsamplePadding)
        : base(withAttention ? "AttnDownBlock2D" : "DownBlock2D")
    {
        BlockType = withAttention ? "AttnDownBlock2D" : "DownBlock2D";
        resnets = new ModuleList<nn.Module<Tensor, Tensor?, Tensor>>();
        if (withAttention) attentions = new ModuleList<nn.Module<Tensor, Tensor>>();
        for (int i = 0; i < numLayers; i++)
        {
            resnets.Add(s.Resnet($"{s.Path}.resnets.{i}", i == 0 ? inChannels : outChannels, outChannels));
            attentions?.Add(s.UNetAttention($"{s.Path}.attentions.{i}", outChannels, s.Groups));
        }
        if (downsampleType == "resnet" && withAttention)
        {
            downsamplers = new ModuleList<nn.Module>((nn.Module)s.Resnet($"{s.Path}.downsamplers.0", outChannels, outChannels, down: true));
            _resnetDownsample = true;
        }
        else if (downsampleType is not null)
        {
            downsamplers = new ModuleList<nn.Module>(new Downsample2D(outChannels, outChannels, downsamplePadding));
        }
        RegisterComponents();
    }

    public IList<nn.Module<Tensor, Tensor?, Tensor>> Resnets => resnets;
    public IList<nn.Module<Tensor, Tensor>>? Attentions => attentions;

    /// <summary>A <see cref="Downsample2D"/>, a down-sampling <see cref="ResnetBlock2D"/> (or a removed one), or null.</summary>
    public nn.Module? Downsampler => downsamplers?[0];

    public Tensor Forward(Tensor hiddenStates, Tensor temb, List<Tensor> outputStates)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            hiddenStates = resnets[i].call(hiddenStates, temb);
            if (attentions is not null) hiddenStates = attentions[i].call(hiddenStates);
            outputStates.Add(hiddenStates);
        }
        if (downsamplers is not null)
        {
            hiddenStates = _resnetDownsample
                ? ((nn.Module<Tensor, Tensor?, Tensor>)downsamplers[0]).call(hiddenStates, temb)
                : ((nn.Module<Tensor, Tensor>)downsamplers[0]).call(hiddenStates);
            outputStates.Add(hiddenStates);
        }
        return hiddenStates;
    }
}

/// <summary>A U-Net up block: ResNet blocks on the concatenated skip, optional attention, optional upsampler.</summary>
public sealed class UpBlock2D : nn.Module
{
    private readonly ModuleList<nn.Module<Tensor, Tensor?, Tensor>> resnets;
    private readonly ModuleList<nn.Module<Tensor, Tensor>>? attentions;
    private readonly ModuleList<nn.Module>? upsamplers;
    private readonly bool _resnetUpsample;

    public string BlockType { get; }
    public int NumLayers => resnets.Count;

    /// <param name="upsampleType">null (no upsampler), "conv" or "resnet". Only AttnUpBlock2D honours "resnet", as in diffusers.</param>
    public UpBlock2D(UNetBlockSettings s, int numLayers, int inChannels, int prevOutputChannel, int outChannels, bool withAttention, string? upsampleType)
        : base(withAttention ? "AttnUpBlock2D" : "UpBlock2D")
    {
        BlockType = withAttention ? "AttnUpBlock2D" : "UpBlock2D";
        resnets = new ModuleList<nn.Module<Tensor, Tensor?, Tensor>>();
        if (withAttention) attentions = new ModuleList<nn.Module<Tensor, Tensor>>();
        for (int i = 0; i < numLayers; i++)
        {
            int resSkipChannels = i == numLayers - 1 ? inChannels : outChannels;
            int resnetInChannels = i == 0 ? prevOutputChannel : outChannels;
            resnets.Add(s.Resnet($"{s.Path}.resnets.{i}", resnetInChannels + resSkipChannels, outChannels));
            attentions?.Add(s.UNetAttention($"{s.Path}.attentions.{i}", outChannels, s.Groups));
        }
        if (upsampleType == "resnet" && withAttention)
        {
            upsamplers = new ModuleList<nn.Module>((nn.Module)s.Resnet($"{s.Path}.upsamplers.0", outChannels, outChannels, up: true));
            _resnetUpsample = true;
        }
        else if (upsampleType is not null)
        {
            upsamplers = new ModuleList<nn.Module>(new Upsample2D(outChannels, outChannels));
        }
        RegisterComponents();
    }

    public IList<nn.Module<Tensor, Tensor?, Tensor>> Resnets => resnets;
    public IList<nn.Module<Tensor, Tensor>>? Attentions => attentions;

    /// <summary>An <see cref="Upsample2D"/>, an up-sampling <see cref="ResnetBlock2D"/> (or a removed one), or null.</summary>
    public nn.Module? Upsampler => upsamplers?[0];

    /// <summary>Consumes skip tensors from the end of <paramref name="resSamples"/>.</summary>
    public Tensor Forward(Tensor hiddenStates, List<Tensor> resSamples, Tensor temb)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            var resHiddenStates = resSamples[^1];
            resSamples.RemoveAt(resSamples.Count - 1);
            hiddenStates = cat([hiddenStates, resHiddenStates], 1);
            hiddenStates = resnets[i].call(hiddenStates, temb);
            if (attentions is not null) hiddenStates = attentions[i].call(hiddenStates);
        }
        if (upsamplers is not null)
        {
            hiddenStates = _resnetUpsample
                ? ((nn.Module<Tensor, Tensor?, Tensor>)upsamplers[0]).call(hiddenStates, temb)
                : ((nn.Module<Tensor, Tensor>)upsamplers[0]).call(hiddenStates);
        }
        return hiddenStates;
    }
}

/// <summary>diffusers' <c>UNetMidBlock2D</c>: resnet, then (attention, resnet) per layer.</summary>
public sealed class UNetMidBlock2D : nn.Module
{
    private readonly ModuleList<nn.Module<Tensor, Tensor?, Tensor>> resnets;
    private readonly ModuleList<nn.Module<Tensor, Tensor>>? attentions;

    public UNetMidBlock2D(UNetBlockSettings s, int inChannels, double outputScaleFactor, int? attnGroups, bool addAttention, int numLayers = 1)
        : base(nameof(UNetMidBlock2D))
    {
        // diffusers: attention groups default to the ResNet groups, except with scale_shift where the
        // attention block then has no GroupNorm at all.
        int? groups = attnGroups ?? (s.TimeScaleShift == "default" ? s.Groups : null);
        resnets = new ModuleList<nn.Module<Tensor, Tensor?, Tensor>>(s.Resnet($"{s.Path}.resnets.0", inChannels, inChannels, outputScaleFactor));
        if (addAttention) attentions = new ModuleList<nn.Module<Tensor, Tensor>>();
        for (int i = 0; i < numLayers; i++)
        {
            attentions?.Add(s.UNetAttention($"{s.Path}.attentions.{i}", inChannels, groups, outputScaleFactor));
            resnets.Add(s.Resnet($"{s.Path}.resnets.{i + 1}", inChannels, inChannels, outputScaleFactor));
        }
        RegisterComponents();
    }

    public IList<nn.Module<Tensor, Tensor?, Tensor>> Resnets => resnets;
    public IList<nn.Module<Tensor, Tensor>>? Attentions => attentions;

    /// <param name="temb">The time embedding; null in AutoencoderKL, whose mid block has none.</param>
    public Tensor Forward(Tensor hiddenStates, Tensor? temb)
    {
        hiddenStates = resnets[0].call(hiddenStates, temb);
        for (int i = 1; i < resnets.Count; i++)
        {
            if (attentions is not null) hiddenStates = attentions[i - 1].call(hiddenStates);
            hiddenStates = resnets[i].call(hiddenStates, temb);
        }
        return hiddenStates;
    }
}
