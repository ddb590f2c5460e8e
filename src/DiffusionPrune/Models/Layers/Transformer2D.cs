using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models.Layers;

/// <summary>
/// diffusers' <c>GEGLU</c>: one projection to twice the hidden width, split into a value half and a gate half, value *
/// gelu(gate) (exact GELU). The weights are stored as <c>proj</c>: rows [0, inner) make the value, [inner, 2 inner) the gate.
/// </summary>
public sealed class GEGLU : nn.Module<Tensor, Tensor>
{
    private readonly Linear proj;

    public int DimOut { get; }

    public GEGLU(int dimIn, int dimOut, bool bias = true) : base(nameof(GEGLU))
    {
        proj = nn.Linear(dimIn, dimOut * 2, bias);
        DimOut = dimOut;
        RegisterComponents();
    }

    public Linear Proj => proj;

    public override Tensor forward(Tensor hiddenStates)
    {
        var halves = proj.call(hiddenStates).chunk(2, -1);
        return halves[0] * nn.functional.gelu(halves[1]);
    }
}

/// <summary>
/// diffusers' <c>FeedForward</c> with <c>activation_fn="geglu"</c>, as Stable Diffusion's transformer blocks use it:
/// net.0 (<see cref="GEGLU"/>), net.1 (dropout), net.2 (linear back to the block width). Its twin with a plain GELU
/// projection is DiT's <see cref="FeedForward"/>; they differ in net.0 only, and that difference decides how pruning
/// must cut net.0 (value and gate rows together here).
/// </summary>
public sealed class GegluFeedForward : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<nn.Module<Tensor, Tensor>> net;

    public int InnerDim { get; }

    /// <summary>Optional gate per hidden neuron (shape [inner]) applied after the GEGLU, as <see cref="FeedForward.NeuronGate"/>.</summary>
    public Tensor? NeuronGate { get; set; }

    public GegluFeedForward(int dim, int innerDim, double dropout = 0.0, bool bias = true) : base(nameof(GegluFeedForward))
    {
        InnerDim = innerDim;
        net = new ModuleList<nn.Module<Tensor, Tensor>>(new GEGLU(dim, innerDim, bias), nn.Dropout(dropout), nn.Linear(innerDim, dim, bias));
        RegisterComponents();
    }

    public GEGLU In => (GEGLU)net[0];
    public Linear Out => (Linear)net[2];

    public override Tensor forward(Tensor x)
    {
        var hidden = net[1].call(net[0].call(x));
        if (NeuronGate is not null) hidden = hidden * NeuronGate;
        return net[2].call(hidden);
    }
}

/// <summary>
/// diffusers' <c>BasicTransformerBlock</c> with <c>norm_type="layer_norm"</c> as Stable Diffusion's U-Net builds it:
/// norm1 + attn1 (self-attention, or attention to the encoder states when only_cross_attention), norm2 + attn2
/// (cross-attention to the encoder states), norm3 + a GEGLU feed-forward of 4 x the width; each step residual.
/// q/k/v have no bias (Transformer2DModel's attention_bias defaults to false), to_out.0 has one; LayerNorms use eps 1e-5
/// with weight and bias. <c>upcast_attention</c> only matters in half precision, so it needs nothing here (float32 throughout).
/// </summary>
public sealed class BasicTransformerBlock : nn.Module
{
    /// <summary>diffusers' BasicTransformerBlock norm_eps default, which Transformer2DModel passes on unchanged.</summary>
    public const double NormEps = 1e-5;

    private readonly LayerNorm norm1;
    private readonly Attention attn1;
    private readonly LayerNorm norm2;
    private readonly Attention attn2;
    private readonly LayerNorm norm3;
    private readonly GegluFeedForward ff;

    public bool OnlyCrossAttention { get; }

    /// <param name="dim">Token width (the transformer's inner width, heads * headDim).</param>
    /// <param name="attn1Heads">attn1's heads (fewer after head pruning; the head width stays).</param>
    /// <param name="attn2Heads">attn2's heads.</param>
    /// <param name="ffInner">The feed-forward's hidden width (4 * dim in diffusers, fewer after pruning).</param>
    public BasicTransformerBlock(int dim, int attn1Heads, int attn2Heads, int headDim, int crossAttentionDim, int ffInner,
        bool onlyCrossAttention, double dropout = 0.0) : base(nameof(BasicTransformerBlock))
    {
        OnlyCrossAttention = onlyCrossAttention;
        norm1 = nn.LayerNorm(dim, NormEps);
        attn1 = new Attention(dim, attn1Heads, headDim, bias: false, outBias: true, dropout: dropout,
            crossAttentionDim: onlyCrossAttention ? crossAttentionDim : null);
        norm2 = nn.LayerNorm(dim, NormEps);
        attn2 = new Attention(dim, attn2Heads, headDim, bias: false, outBias: true, dropout: dropout, crossAttentionDim: crossAttentionDim);
        norm3 = nn.LayerNorm(dim, NormEps);
        ff = new GegluFeedForward(dim, ffInner, dropout);
        RegisterComponents();
    }

    public LayerNorm Norm1 => norm1;
    public Attention Attn1 => attn1;
    public LayerNorm Norm2 => norm2;
    public Attention Attn2 => attn2;
    public LayerNorm Norm3 => norm3;
    public GegluFeedForward FF => ff;

    /// <param name="hiddenStates">[B, N, dim] tokens (one per pixel).</param>
    /// <param name="encoderHiddenStates">[B, T, crossAttentionDim] text states.</param>
    /// <param name="encoderAttentionBias">[B, 1, T] score bias (0 keep, -10000 drop) for the cross-attention, or null.</param>
    public Tensor Forward(Tensor hiddenStates, Tensor encoderHiddenStates, Tensor? encoderAttentionBias) =>
        LayerScope.Run(hiddenStates, () => Compute(hiddenStates, encoderHiddenStates, encoderAttentionBias));

    private Tensor Compute(Tensor hiddenStates, Tensor encoderHiddenStates, Tensor? encoderAttentionBias)
    {
        // 1. self-attention (or, with only_cross_attention, attention to the text without its mask, as diffusers passes
        //    attn1 the self-attention mask, which the U-Net never sets)
        var normHiddenStates = norm1.call(hiddenStates);
        hiddenStates = attn1.Forward(normHiddenStates, OnlyCrossAttention ? encoderHiddenStates : null, null) + hiddenStates;

        // 2. cross-attention
        normHiddenStates = norm2.call(hiddenStates);
        hiddenStates = attn2.Forward(normHiddenStates, encoderHiddenStates, encoderAttentionBias) + hiddenStates;

        // 3. feed-forward
        return ff.call(norm3.call(hiddenStates)) + hiddenStates;
    }
}

/// <summary>
/// diffusers' <c>Transformer2DModel</c> on continuous inputs, the attention of Stable Diffusion's cross-attention blocks:
/// GroupNorm (eps 1e-6), proj_in to the inner width (a 1x1 convolution, or a Linear on the tokens when
/// <c>use_linear_projection</c>), <see cref="BasicTransformerBlock"/>s over the H*W tokens, proj_out back, plus the input.
/// Both projections are kept in the form diffusers stores, so the weights load by name either way.
/// </summary>
public sealed class Transformer2DModel : nn.Module
{
    /// <summary>diffusers hard-codes this eps for the GroupNorm before proj_in.</summary>
    public const double NormEps = 1e-6;

    private readonly GroupNorm norm;
    private readonly nn.Module<Tensor, Tensor> proj_in;
    private readonly ModuleList<BasicTransformerBlock> transformer_blocks;
    private readonly nn.Module<Tensor, Tensor> proj_out;

    public int InChannels { get; }
    public int InnerDim { get; }
    public bool UseLinearProjection { get; }

    /// <param name="blocks">The transformer blocks, built by the caller (which knows each one's pruned widths); at least one.</param>
    public Transformer2DModel(int inChannels, int innerDim, int normGroups, bool useLinearProjection, IEnumerable<BasicTransformerBlock> blocks)
        : base(nameof(Transformer2DModel))
    {
        InChannels = inChannels;
        InnerDim = innerDim;
        UseLinearProjection = useLinearProjection;
        norm = LayerFactory.GroupNorm(normGroups, inChannels, NormEps);
        proj_in = useLinearProjection ? nn.Linear(inChannels, innerDim) : nn.Conv2d(inChannels, innerDim, 1);
        transformer_blocks = new ModuleList<BasicTransformerBlock>(blocks.ToArray());
        if (transformer_blocks.Count == 0)
            throw new ArgumentException("A Transformer2DModel needs at least one transformer block.", nameof(blocks));
        proj_out = useLinearProjection ? nn.Linear(innerDim, inChannels) : nn.Conv2d(innerDim, inChannels, 1);
        RegisterComponents();
    }

    public GroupNorm Norm => norm;

    /// <summary>
    /// Optional gate on the whole model (a scalar or [1] tensor): output = x + g * (transformer(x) - x), so a gate of exactly
    /// 0 gives the identity that <see cref="RemovedTransformer2D"/> computes after layer pruning (the model is residual).
    /// </summary>
    public Tensor? LayerGate { get; set; }

    /// <summary>A <see cref="Conv2d"/> (1x1) or, with use_linear_projection, a <see cref="Linear"/>.</summary>
    public nn.Module<Tensor, Tensor> ProjIn => proj_in;

    /// <inheritdoc cref="ProjIn"/>
    public nn.Module<Tensor, Tensor> ProjOut => proj_out;
    public IList<BasicTransformerBlock> TransformerBlocks => transformer_blocks;

    /// <param name="hiddenStates">[B, C, H, W] feature map.</param>
    /// <param name="encoderHiddenStates">[B, T, D] text states for the cross-attention.</param>
    /// <param name="encoderAttentionBias">[B, 1, T] score bias, or null.</param>
    public Tensor Forward(Tensor hiddenStates, Tensor encoderHiddenStates, Tensor? encoderAttentionBias) =>
        LayerScope.Run(hiddenStates, () => Compute(hiddenStates, encoderHiddenStates, encoderAttentionBias));

    private Tensor Compute(Tensor hiddenStates, Tensor encoderHiddenStates, Tensor? encoderAttentionBias)
    {
        var residual = hiddenStates;
        long batch = hiddenStates.shape[0], height = hiddenStates.shape[2], width = hiddenStates.shape[3];

        // 1. input: [B, C, H, W] -> tokens [B, H*W, inner]
        hiddenStates = norm.call(hiddenStates);
        if (!UseLinearProjection)
            hiddenStates = proj_in.call(hiddenStates).permute(0, 2, 3, 1).reshape(batch, height * width, InnerDim);
        else
            hiddenStates = proj_in.call(hiddenStates.permute(0, 2, 3, 1).reshape(batch, height * width, InChannels));

        // 2. blocks
        foreach (var block in transformer_blocks)
            hiddenStates = block.Forward(hiddenStates, encoderHiddenStates, encoderAttentionBias);

        // 3. output: tokens -> [B, C, H, W], plus the input
        if (!UseLinearProjection)
            hiddenStates = proj_out.call(hiddenStates.reshape(batch, height, width, InnerDim).permute(0, 3, 1, 2).contiguous());
        else
            hiddenStates = proj_out.call(hiddenStates).reshape(batch, height, width, InChannels).permute(0, 3, 1, 2).contiguous();
        return LayerGate is null ? hiddenStates + residual : residual + LayerGate * hiddenStates;
    }
}

/// <summary>
/// A <see cref="Transformer2DModel"/> removed by layer pruning: the identity (the model adds its input back), with no
/// weights. The cross-attention blocks call <see cref="Forward"/> in its place; twin of UNet2DModel's RemovedAttention.
/// </summary>
public sealed class RemovedTransformer2D() : nn.Module(nameof(RemovedTransformer2D))
{
    public static Tensor Forward(Tensor hiddenStates) => hiddenStates;
}

/// <summary>Runs a cross-attention block's attention slot: a <see cref="Transformer2DModel"/>, or the identity for a removed one.</summary>
public static class CrossAttentionSlot
{
    public static Tensor Forward(nn.Module slot, Tensor hiddenStates, Tensor encoderHiddenStates, Tensor? encoderAttentionBias) => slot switch
    {
        Transformer2DModel transformer => transformer.Forward(hiddenStates, encoderHiddenStates, encoderAttentionBias),
        RemovedTransformer2D => RemovedTransformer2D.Forward(hiddenStates),
        _ => throw new InvalidOperationException($"Unexpected attention module {slot.GetName()}."),
    };
}
