using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models.Layers;

/// <summary>
/// diffusers' <c>Attention</c> with <c>AttnProcessor2_0</c>: optional GroupNorm on the input (U-Net attention
/// blocks), q/k/v projections of <c>heads * dimHead</c>, scaled dot-product attention, <c>to_out.0</c>, optional
/// residual connection and output rescaling. Accepts [B, C, H, W] (U-Net) or [B, N, C] (transformer) inputs.
/// With a <c>crossAttentionDim</c>, keys and values are projected from encoder states of that width
/// (<see cref="Forward(Tensor, Tensor?, Tensor?)"/>), as Stable Diffusion's attn2 attends to the text.
/// </summary>
public sealed class Attention : nn.Module<Tensor, Tensor>
{
    private readonly GroupNorm? group_norm;
    private readonly Linear to_q;
    private readonly Linear to_k;
    private readonly Linear to_v;
    private readonly ModuleList<nn.Module<Tensor, Tensor>> to_out;

    private readonly bool _residualConnection;
    private readonly double _rescaleOutputFactor;

    public int QueryDim { get; }
    public int Heads { get; }
    public int DimHead { get; }
    public int? NormGroups { get; }

    /// <summary>Width of the states keys and values are projected from: <see cref="QueryDim"/> for self-attention.</summary>
    public int CrossAttentionDim { get; }

    /// <summary>Whether to_k / to_v read encoder states of their own width (diffusers' <c>is_cross_attention</c>).</summary>
    public bool IsCrossAttention { get; }

    /// <summary>Optional gate per head (shape [heads]) multiplying each head's output before to_out.</summary>
    public Tensor? HeadGate { get; set; }

    /// <summary>
    /// Optional gate on the whole (residual) block, a scalar or [1] tensor: output = x + g * (attn(x) - x),
    /// so a gate of exactly 0 gives the identity that <see cref="RemovedAttention"/> computes.
    /// </summary>
    public Tensor? LayerGate { get; set; }

    /// <summary>Whether the input is added back (U-Net attention blocks); only such a block is removable on its own.</summary>
    public bool ResidualConnection => _residualConnection;

    /// <summary>The output (after the residual) is divided by this; 1 leaves it unchanged.</summary>
    public double RescaleOutputFactor => _rescaleOutputFactor;

    public Attention(int queryDim, int heads, int dimHead, bool bias = true, bool outBias = true, int? normNumGroups = null,
        double eps = 1e-5, bool residualConnection = false, double rescaleOutputFactor = 1.0, double dropout = 0.0,
        int? crossAttentionDim = null) : base(nameof(Attention))
    {
        QueryDim = queryDim;
        CrossAttentionDim = crossAttentionDim ?? queryDim;
        IsCrossAttention = crossAttentionDim is not null;
        Heads = heads;
        DimHead = dimHead;
        NormGroups = normNumGroups;
        int inner = heads * dimHead;
        if (normNumGroups is int groups)
            group_norm = LayerFactory.GroupNorm(groups, queryDim, eps);
        to_q = nn.Linear(queryDim, inner, bias);
        to_k = nn.Linear(CrossAttentionDim, inner, bias);
        to_v = nn.Linear(CrossAttentionDim, inner, bias);
        to_out = new ModuleList<nn.Module<Tensor, Tensor>>(nn.Linear(inner, queryDim, outBias), nn.Dropout(dropout));
        _residualConnection = residualConnection;
        _rescaleOutputFactor = rescaleOutputFactor;
        RegisterComponents();
    }

    public override Tensor forward(Tensor hiddenStates) => Forward(hiddenStates, null, null);

    /// <param name="hiddenStates">The queries' source: [B, C, H, W] or [B, N, C].</param>
    /// <param name="encoderHiddenStates">[B, T, CrossAttentionDim] to attend to; null attends to <paramref name="hiddenStates"/> itself.</param>
    /// <param name="attentionBias">
    /// Added to the attention scores, broadcast as [B, 1, 1, T] (diffusers turns a 0/1 mask into 0 / -10000 and gives it
    /// a singleton query axis, [B, 1, T]); null for none.
    /// </param>
    public Tensor Forward(Tensor hiddenStates, Tensor? encoderHiddenStates, Tensor? attentionBias) =>
        LayerScope.Run(hiddenStates, () => Compute(hiddenStates, encoderHiddenStates, attentionBias));

    private Tensor Compute(Tensor hiddenStates, Tensor? encoderHiddenStates, Tensor? attentionBias)
    {
        var blockInput = hiddenStates;
        var residual = hiddenStates;
        long batch = hiddenStates.shape[0];
        bool spatial = hiddenStates.dim() == 4;
        long channels = 0, height = 0, width = 0;
        if (spatial)
        {
            channels = hiddenStates.shape[1];
            height = hiddenStates.shape[2];
            width = hiddenStates.shape[3];
            hiddenStates = hiddenStates.view(batch, channels, height * width).transpose(1, 2);
        }
        if (group_norm is not null)
            hiddenStates = group_norm.call(hiddenStates.transpose(1, 2)).transpose(1, 2);

        var keySource = encoderHiddenStates ?? hiddenStates;

        // [B, N, heads * dimHead] -> [B, heads, N, dimHead]; keys and values [B, heads, T, dimHead]
        var query = to_q.call(hiddenStates).view(batch, -1, Heads, DimHead).transpose(1, 2);
        var key = to_k.call(keySource).view(batch, -1, Heads, DimHead).transpose(1, 2);
        var value = to_v.call(keySource).view(batch, -1, Heads, DimHead).transpose(1, 2);
        var attended = attentionBias is null
            ? nn.functional.scaled_dot_product_attention(query, key, value)
            : nn.functional.scaled_dot_product_attention(query, key, value, attentionBias.view(batch, 1, -1, attentionBias.shape[^1]));
        if (HeadGate is not null)
            attended = attended * HeadGate.view(1, -1, 1, 1);
        hiddenStates = attended.transpose(1, 2).reshape(batch, -1, Heads * DimHead);
        hiddenStates = to_out[1].call(to_out[0].call(hiddenStates));

        if (spatial)
            hiddenStates = hiddenStates.transpose(-1, -2).reshape(batch, channels, height, width);
        if (_residualConnection)
            hiddenStates = hiddenStates + residual;
        if (_rescaleOutputFactor != 1.0) hiddenStates = hiddenStates / _rescaleOutputFactor;
        return LayerGate is null ? hiddenStates : blockInput + LayerGate * (hiddenStates - blockInput);
    }

    public GroupNorm? GroupNormModule => group_norm;
    public Linear ToQ => to_q;
    public Linear ToK => to_k;
    public Linear ToV => to_v;
    public Linear ToOut => (Linear)to_out[0];
}
