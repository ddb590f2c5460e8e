using DiffusionPrune.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>
/// How a cross-attention block builds its <see cref="Transformer2DModel"/>s: what diffusers' get_down_block / get_mid_block /
/// get_up_block pass on (heads, text width, depth, projection form, only_cross_attention). Head and feed-forward widths
/// come from the block settings' <see cref="ModelStructure"/>, keyed by the module paths (<c>....transformer_blocks.0.attn1</c>,
/// <c>.attn2</c>, <c>.ff</c>), so a pruned model rebuilds from its config.
/// </summary>
public sealed record CrossAttentionSettings(int Heads, int CrossAttentionDim, int TransformerLayers, bool UseLinearProjection, bool OnlyCrossAttention, double Dropout)
{
    /// <summary>
    /// diffusers' <c>Transformer2DModel(heads, channels // heads, in_channels=channels, norm_num_groups=groups, ...)</c>, or a
    /// weightless <see cref="RemovedTransformer2D"/> when layer pruning removed it.
    /// </summary>
    public nn.Module Build(string path, int channels, int groups, ModelStructure structure)
    {
        if (structure.IsRemoved(path)) return new RemovedTransformer2D();
        int headDim = channels / Heads;
        var blocks = Enumerable.Range(0, TransformerLayers).Select(j =>
        {
            string block = $"{path}.transformer_blocks.{j}";
            return new BasicTransformerBlock(channels, structure.Heads($"{block}.attn1", Heads), structure.Heads($"{block}.attn2", Heads), headDim,
                CrossAttentionDim, structure.FeedForward($"{block}.ff", 4 * channels), OnlyCrossAttention, Dropout);
        });
        return new Transformer2DModel(channels, Heads * headDim, groups, UseLinearProjection, blocks);
    }
}

/// <summary>
/// diffusers' <c>CrossAttnDownBlock2D</c>: per layer a ResNet block then a <see cref="Transformer2DModel"/> over the text,
/// each layer's output kept as a skip; then (except at the last resolution) a stride-2 convolution. Its twin without text
/// is <see cref="DownBlock2D"/>.
/// </summary>
public sealed class CrossAttnDownBlock2D : nn.Module
{
    private readonly ModuleList<nn.Module<Tensor, Tensor?, Tensor>> resnets;
    private readonly ModuleList<nn.Module> attentions;
    private readonly ModuleList<Downsample2D>? downsamplers;

    public CrossAttnDownBlock2D(UNetBlockSettings s, CrossAttentionSettings a, int numLayers, int inChannels, int outChannels,
        bool addDownsample, int downsamplePadding) : base(nameof(CrossAttnDownBlock2D))
    {
        resnets = new ModuleList<nn.Module<Tensor, Tensor?, Tensor>>();
        attentions = new ModuleList<nn.Module>();
        for (int i = 0; i < numLayers; i++)
        {
            resnets.Add(s.Resnet($"{s.Path}.resnets.{i}", i == 0 ? inChannels : outChannels, outChannels));
            attentions.Add(a.Build($"{s.Path}.attentions.{i}", outChannels, s.Groups, s.Structure));
        }
        if (addDownsample)
            downsamplers = new ModuleList<Downsample2D>(new Downsample2D(outChannels, outChannels, downsamplePadding));
        RegisterComponents();
    }

    public IList<nn.Module<Tensor, Tensor?, Tensor>> Resnets => resnets;
    /// <summary>Each layer's <see cref="Transformer2DModel"/>, or a <see cref="RemovedTransformer2D"/> where layer pruning removed it.</summary>
    public IList<nn.Module> Attentions => attentions;
    public Downsample2D? Downsampler => downsamplers?[0];

    /// <param name="outputStates">Receives each layer's output and the downsampled one: the skips the up blocks consume.</param>
    public Tensor Forward(Tensor hiddenStates, Tensor temb, Tensor encoderHiddenStates, Tensor? encoderAttentionBias, List<Tensor> outputStates)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            hiddenStates = resnets[i].call(hiddenStates, temb);
            hiddenStates = CrossAttentionSlot.Forward(attentions[i], hiddenStates, encoderHiddenStates, encoderAttentionBias);
            outputStates.Add(hiddenStates);
        }
        if (downsamplers is not null)
        {
            hiddenStates = downsamplers[0].call(hiddenStates);
            outputStates.Add(hiddenStates);
        }
        return hiddenStates;
    }
}

/// <summary>
/// diffusers' <c>CrossAttnUpBlock2D</c>: per layer the last skip is concatenated on the channels, a ResNet block and a
/// <see cref="Transformer2DModel"/> follow; then (except at the last resolution) nearest 2x upsampling and a 3x3
/// convolution. Its twin without text is <see cref="UpBlock2D"/>.
/// </summary>
public sealed class CrossAttnUpBlock2D : nn.Module
{
    private readonly ModuleList<nn.Module<Tensor, Tensor?, Tensor>> resnets;
    private readonly ModuleList<nn.Module> attentions;
    private readonly ModuleList<Upsample2D>? upsamplers;

    public CrossAttnUpBlock2D(UNetBlockSettings s, CrossAttentionSettings a, int numLayers, int inChannels, int prevOutputChannel, int outChannels,
        bool addUpsample) : base(nameof(CrossAttnUpBlock2D))
    {
        resnets = new ModuleList<nn.Module<Tensor, Tensor?, Tensor>>();
        attentions = new ModuleList<nn.Module>();
        for (int i = 0; i < numLayers; i++)
        {
            int resSkipChannels = i == numLayers - 1 ? inChannels : outChannels;
            int resnetInChannels = i == 0 ? prevOutputChannel : outChannels;
            resnets.Add(s.Resnet($"{s.Path}.resnets.{i}", resnetInChannels + resSkipChannels, outChannels));
            attentions.Add(a.Build($"{s.Path}.attentions.{i}", outChannels, s.Groups, s.Structure));
        }
        if (addUpsample)
            upsamplers = new ModuleList<Upsample2D>(new Upsample2D(outChannels, outChannels));
        RegisterComponents();
    }

    public IList<nn.Module<Tensor, Tensor?, Tensor>> Resnets => resnets;
    /// <summary>Each layer's <see cref="Transformer2DModel"/>, or a <see cref="RemovedTransformer2D"/> where layer pruning removed it.</summary>
    public IList<nn.Module> Attentions => attentions;
    public Upsample2D? Upsampler => upsamplers?[0];

    /// <summary>Consumes skip tensors from the end of <paramref name="resSamples"/>.</summary>
    public Tensor Forward(Tensor hiddenStates, List<Tensor> resSamples, Tensor temb, Tensor encoderHiddenStates, Tensor? encoderAttentionBias)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            var resHiddenStates = resSamples[^1];
            resSamples.RemoveAt(resSamples.Count - 1);
            hiddenStates = cat([hiddenStates, resHiddenStates], 1);
            hiddenStates = resnets[i].call(hiddenStates, temb);
            hiddenStates = CrossAttentionSlot.Forward(attentions[i], hiddenStates, encoderHiddenStates, encoderAttentionBias);
        }
        return upsamplers is null ? hiddenStates : upsamplers[0].call(hiddenStates);
    }
}

/// <summary>
/// diffusers' <c>UNetMidBlock2DCrossAttn</c> (one layer, as UNet2DConditionModel builds it): ResNet, then per layer a
/// <see cref="Transformer2DModel"/> and a ResNet; the ResNets divide their output by mid_block_scale_factor. Its twin
/// with plain self-attention is <see cref="UNetMidBlock2D"/>.
/// </summary>
public sealed class UNetMidBlock2DCrossAttn : nn.Module
{
    private readonly ModuleList<nn.Module<Tensor, Tensor?, Tensor>> resnets;
    private readonly ModuleList<nn.Module> attentions;

    public UNetMidBlock2DCrossAttn(UNetBlockSettings s, CrossAttentionSettings a, int inChannels, double outputScaleFactor, int numLayers = 1)
        : base(nameof(UNetMidBlock2DCrossAttn))
    {
        resnets = new ModuleList<nn.Module<Tensor, Tensor?, Tensor>>(s.Resnet($"{s.Path}.resnets.0", inChannels, inChannels, outputScaleFactor));
        attentions = new ModuleList<nn.Module>();
        for (int i = 0; i < numLayers; i++)
        {
            attentions.Add(a.Build($"{s.Path}.attentions.{i}", inChannels, s.Groups, s.Structure));
            resnets.Add(s.Resnet($"{s.Path}.resnets.{i + 1}", inChannels, inChannels, outputScaleFactor));
        }
        RegisterComponents();
    }

    public IList<nn.Module<Tensor, Tensor?, Tensor>> Resnets => resnets;
    /// <summary>Each layer's <see cref="Transformer2DModel"/>, or a <see cref="RemovedTransformer2D"/> where layer pruning removed it.</summary>
    public IList<nn.Module> Attentions => attentions;

    public Tensor Forward(Tensor hiddenStates, Tensor temb, Tensor encoderHiddenStates, Tensor? encoderAttentionBias)
    {
        hiddenStates = resnets[0].call(hiddenStates, temb);
        for (int i = 0; i < attentions.Count; i++)
        {
            hiddenStates = CrossAttentionSlot.Forward(attentions[i], hiddenStates, encoderHiddenStates, encoderAttentionBias);
            hiddenStates = resnets[i + 1].call(hiddenStates, temb);
        }
        return hiddenStates;
    }
}
