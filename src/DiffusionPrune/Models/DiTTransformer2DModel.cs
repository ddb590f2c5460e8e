using DiffusionPrune.Models.Layers;
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>diffusers' <c>PatchEmbed</c> with fixed 2-D sin-cos positions (not saved in the state dict).</summary>
public sealed class PatchEmbed : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d proj;
    // Held in an array so RegisterComponents does not save it: diffusers keeps it as a non-persistent buffer.
    private readonly Tensor[] _posEmbed; // [1, N, D]
    private readonly int _patchSize, _gridH, _gridW, _baseSize, _embedDim;

    public PatchEmbed(int height, int width, int patchSize, int inChannels, int embedDim) : base(nameof(PatchEmbed))
    {
        proj = nn.Conv2d(inChannels, embedDim, (patchSize, patchSize), stride: (patchSize, patchSize));
        (_patchSize, _gridH, _gridW, _baseSize, _embedDim) = (patchSize, height / patchSize, width / patchSize, height / patchSize, embedDim);
        _posEmbed = [SinCos2D(embedDim, _gridH, _gridW, _baseSize).unsqueeze(0).DetachFromDisposeScope()];
        RegisterComponents();
    }

    /// <summary>
    /// diffusers' <c>get_2d_sincos_pos_embed</c>: the first half of each vector encodes the column
    /// (x) position, the second half the row; frequencies in float64, result cast to float32.
    /// </summary>
    public static Tensor SinCos2D(int embedDim, int gridH, int gridW, int baseSize)
    {
        using var scope = NewDisposeScope();
        var rows = arange(gridH, dtype: ScalarType.Float32) / (float)(gridH / (double)baseSize);
        var cols = arange(gridW, dtype: ScalarType.Float32) / (float)(gridW / (double)baseSize);
        var rowGrid = rows.view(-1, 1).expand(gridH, gridW).reshape(-1);
        var colGrid = cols.view(1, -1).expand(gridH, gridW).reshape(-1);
        var emb = cat([SinCos1D(embedDim / 2, colGrid), SinCos1D(embedDim / 2, rowGrid)], 1);
        return emb.to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    private static Tensor SinCos1D(int embedDim, Tensor positions)
    {
        var omega = arange(embedDim / 2, dtype: ScalarType.Float64) / (embedDim / 2.0);
        omega = 1.0 / pow(10000.0, omega);
        var outer = positions.to_type(ScalarType.Float64).unsqueeze(1) * omega.unsqueeze(0);
        return cat([sin(outer), cos(outer)], 1);
    }

    public override Tensor forward(Tensor latent)
    {
        int gridH = (int)latent.shape[^2] / _patchSize, gridW = (int)latent.shape[^1] / _patchSize;
        var x = proj.call(latent).flatten(2).transpose(1, 2); // BCHW -> BNC
        // diffusers recomputes the table (same base size) for a resolution other than the configured one.
        if (gridH != _gridH || gridW != _gridW)
            return x + SinCos2D(_embedDim, gridH, gridW, _baseSize).unsqueeze(0).to(x.device);
        // Recreate the cached table if a caller's dispose scope released it or the device changed.
        if (_posEmbed[0].IsInvalid)
            _posEmbed[0] = SinCos2D(_embedDim, _gridH, _gridW, _baseSize).unsqueeze(0).DetachFromDisposeScope();
        if (_posEmbed[0].device != x.device)
            _posEmbed[0] = _posEmbed[0].to(x.device).DetachFromDisposeScope();
        var position = _posEmbed[0];
        return x + position;
    }

    public Conv2d Proj => proj;
    public int PatchSize => _patchSize;
    public int EmbedDim => _embedDim;

    /// <summary>The grid side the position table is scaled to (diffusers' base_size).</summary>
    public int BaseSize => _baseSize;
}

/// <summary>diffusers' <c>LabelEmbedding</c> (the table has one extra row, the null class, when dropout is used).</summary>
public sealed class LabelEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly Embedding embedding_table;

    public LabelEmbedding(int numClasses, int hiddenSize, double dropoutProb) : base(nameof(LabelEmbedding))
    {
        embedding_table = nn.Embedding(numClasses + (dropoutProb > 0 ? 1 : 0), hiddenSize);
        RegisterComponents();
    }

    public Embedding Table => embedding_table;

    public override Tensor forward(Tensor labels) => embedding_table.call(labels.to_type(ScalarType.Int64));
}

/// <summary>diffusers' <c>CombinedTimestepLabelEmbeddings</c>: 256 sinusoidal features (shift 1) -> MLP, plus the label embedding.</summary>
public sealed class CombinedTimestepLabelEmbeddings : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly TimestepEmbedding timestep_embedder;
    private readonly LabelEmbedding class_embedder;

    public CombinedTimestepLabelEmbeddings(int numClasses, int embeddingDim, double classDropoutProb = 0.1) : base(nameof(CombinedTimestepLabelEmbeddings))
    {
        timestep_embedder = new TimestepEmbedding(TimestepFeatureDim, embeddingDim);
        class_embedder = new LabelEmbedding(numClasses, embeddingDim, classDropoutProb);
        RegisterComponents();
    }

    public TimestepEmbedding TimestepEmbedder => timestep_embedder;
    public LabelEmbedding ClassEmbedder => class_embedder;

    /// <summary>Width of the sinusoidal timestep features (flip_sin_to_cos, shift 1).</summary>
    public const int TimestepFeatureDim = 256;

    public override Tensor forward(Tensor timestep, Tensor classLabels)
    {
        var timestepsProj = TimestepFeatures.Sinusoidal(timestep, TimestepFeatureDim, flipSinToCos: true, downscaleFreqShift: 1);
        return timestep_embedder.call(timestepsProj) + class_embedder.call(classLabels);
    }
}

/// <summary>diffusers' <c>AdaLayerNormZero</c>: conditioning -> six modulation vectors; LayerNorm without affine.</summary>
public sealed class AdaLayerNormZero : nn.Module
{
    private readonly CombinedTimestepLabelEmbeddings emb;
    private readonly Linear linear;
    private readonly int _dim;

    public AdaLayerNormZero(int embeddingDim, int numEmbeddings) : base(nameof(AdaLayerNormZero))
    {
        emb = new CombinedTimestepLabelEmbeddings(numEmbeddings, embeddingDim);
        linear = nn.Linear(embeddingDim, 6 * embeddingDim);
        _dim = embeddingDim;
        RegisterComponents();
    }

    /// <summary>LayerNorm epsilon of the modulated norm (diffusers hard-codes 1e-6).</summary>
    public const double Eps = 1e-6;

    public CombinedTimestepLabelEmbeddings Emb => emb;
    public Linear Linear => linear;

    /// <returns>normed x, gate_msa, shift_mlp, scale_mlp, gate_mlp</returns>
    public (Tensor x, Tensor gateMsa, Tensor shiftMlp, Tensor scaleMlp, Tensor gateMlp) Forward(Tensor x, Tensor timestep, Tensor classLabels)
    {
        var e = linear.call(nn.functional.silu(emb.call(timestep, classLabels)));
        var chunks = e.chunk(6, 1); // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
        var normed = nn.functional.layer_norm(x, [_dim], null, null, Eps);
        normed = normed * (chunks[1].unsqueeze(1) + 1) + chunks[0].unsqueeze(1);
        return (normed, chunks[2], chunks[3], chunks[4], chunks[5]);
    }
}

/// <summary>diffusers' <c>GELU</c> activation module (a projection followed by GELU).</summary>
public sealed class GeluProjection : nn.Module<Tensor, Tensor>
{
    private readonly Linear proj;
    private readonly bool _tanh;

    public GeluProjection(int dimIn, int dimOut, bool approximateTanh, bool bias = true) : base(nameof(GeluProjection))
    {
        proj = nn.Linear(dimIn, dimOut, bias);
        _tanh = approximateTanh;
        RegisterComponents();
    }

    public Linear Proj => proj;
    public bool ApproximateTanh => _tanh;

    public override Tensor forward(Tensor x) =>
        nn.functional.gelu(proj.call(x), _tanh ? GELU.Approximate.tanh : GELU.Approximate.none);
}

/// <summary>diffusers' <c>FeedForward</c>: net.0 (GELU projection), net.1 (dropout), net.2 (linear).</summary>
public sealed class FeedForward : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<nn.Module<Tensor, Tensor>> net;

    public int InnerDim { get; }

    /// <summary>Optional gate per hidden neuron (shape [inner]) applied after the activation.</summary>
    public Tensor? NeuronGate { get; set; }

    public FeedForward(int dim, int innerDim, bool approximateTanh, double dropout = 0.0, bool bias = true) : base(nameof(FeedForward))
    {
        InnerDim = innerDim;
        net = new ModuleList<nn.Module<Tensor, Tensor>>(new GeluProjection(dim, innerDim, approximateTanh, bias), nn.Dropout(dropout), nn.Linear(innerDim, dim, bias));
        RegisterComponents();
    }

    public GeluProjection In => (GeluProjection)net[0];
    public Linear Out => (Linear)net[2];

    public override Tensor forward(Tensor x)
    {
        var hidden = net[1].call(net[0].call(x));
        if (NeuronGate is not null) hidden = hidden * NeuronGate;
        return net[2].call(hidden);
    }
}

/// <summary>One DiT block: diffusers' <c>BasicTransformerBlock</c> with ada_norm_zero and no cross-attention.</summary>
public sealed class DiTBlock : nn.Module
{
    private readonly AdaLayerNormZero norm1;
    private readonly Attention attn1;
    private readonly LayerNorm? norm3; // only with norm_elementwise_affine; otherwise a plain LayerNorm without weights
    private readonly FeedForward ff;
    private readonly int _dim;
    private readonly double _normEps;

    public DiTBlock(int dim, int heads, int headDim, int ffInner, int numEmbedsAdaNorm, bool attentionBias, bool approximateTanh, double normEps, double dropout,
        bool normElementwiseAffine = false)
        : base(nameof(DiTBlock))
    {
        norm1 = new AdaLayerNormZero(dim, numEmbedsAdaNorm);
        attn1 = new Attention(dim, heads, headDim, bias: attentionBias, outBias: true, dropout: dropout);
        if (normElementwiseAffine) norm3 = nn.LayerNorm(dim, normEps, elementwise_affine: true);
        ff = new FeedForward(dim, ffInner, approximateTanh, dropout);
        _dim = dim;
        _normEps = normEps;
        RegisterComponents();
    }

    public AdaLayerNormZero Norm1 => norm1;
    public Attention Attn1 => attn1;
    public FeedForward Ff => ff;

    /// <summary>The affine LayerNorm before the feed-forward (norm_elementwise_affine), or null for a plain one with <see cref="NormEps"/>.</summary>
    public LayerNorm? Norm3 => norm3;
    public double NormEps => _normEps;

    /// <summary>
    /// Optional gate on the whole block, a scalar or [1] tensor: output = x + g * (block(x) - x), so a
    /// gate of exactly 0 gives the identity that <see cref="RemovedDiTBlock"/> computes.
    /// </summary>
    public Tensor? LayerGate { get; set; }

    public Tensor Forward(Tensor hiddenStates, Tensor timestep, Tensor classLabels)
    {
        var blockInput = hiddenStates;
        var (normHiddenStates, gateMsa, shiftMlp, scaleMlp, gateMlp) = norm1.Forward(hiddenStates, timestep, classLabels);
        var attnOutput = attn1.call(normHiddenStates);
        hiddenStates = gateMsa.unsqueeze(1) * attnOutput + hiddenStates;

        normHiddenStates = norm3 is not null ? norm3.call(hiddenStates) : nn.functional.layer_norm(hiddenStates, [_dim], null, null, _normEps);
        normHiddenStates = normHiddenStates * (scaleMlp.unsqueeze(1) + 1) + shiftMlp.unsqueeze(1);
        var ffOutput = ff.call(normHiddenStates);
        var output = gateMlp.unsqueeze(1) * ffOutput + hiddenStates;
        return LayerGate is null ? output : blockInput + LayerGate * (output - blockInput);
    }
}

/// <summary>
/// A transformer block removed by layer pruning (the identity). Block 0 keeps its conditioning
/// embedding because diffusers' final layer reads <c>transformer_blocks.0.norm1.emb</c>.
/// </summary>
public sealed class RemovedDiTBlock : nn.Module
{
    private readonly RemovedDiTNorm? norm1;

    public RemovedDiTBlock(int? keepEmbeddingDim, int numEmbedsAdaNorm) : base(nameof(RemovedDiTBlock))
    {
        if (keepEmbeddingDim is int dim) norm1 = new RemovedDiTNorm(dim, numEmbedsAdaNorm);
        RegisterComponents();
    }

    public CombinedTimestepLabelEmbeddings? Emb => norm1?.Emb;
}

/// <summary>Holds <c>norm1.emb</c> of a removed block 0 under its original key names.</summary>
public sealed class RemovedDiTNorm : nn.Module
{
    private readonly CombinedTimestepLabelEmbeddings emb;

    public RemovedDiTNorm(int dim, int numEmbedsAdaNorm) : base(nameof(RemovedDiTNorm))
    {
        emb = new CombinedTimestepLabelEmbeddings(numEmbedsAdaNorm, dim);
        RegisterComponents();
    }

    public CombinedTimestepLabelEmbeddings Emb => emb;
}

/// <summary>diffusers' <c>DiTTransformer2DModel</c>: patchify, AdaLN-Zero transformer blocks, modulated unpatchify.</summary>
public sealed class DiTTransformer2DModel : DiffusionModel
{
    private readonly PatchEmbed pos_embed;
    private readonly ModuleList<nn.Module> transformer_blocks;
    private readonly Linear proj_out_1;
    private readonly Linear proj_out_2;

    public DiTConfig Config { get; }

    public DiTTransformer2DModel(DiTConfig config) : base(nameof(DiTTransformer2DModel))
    {
        config.Validate();
        Config = config;
        var c = config;
        int dim = c.InnerDim;
        pos_embed = new PatchEmbed(c.SampleSize, c.SampleSize, c.PatchSize, c.InChannels, dim);
        transformer_blocks = new ModuleList<nn.Module>();
        for (int i = 0; i < c.NumLayers; i++)
        {
            string path = $"transformer_blocks.{i}";
            if (c.Structure.IsRemoved(path))
            {
                transformer_blocks.Add(new RemovedDiTBlock(i == 0 ? dim : null, c.NumEmbedsAdaNorm!.Value));
                continue;
            }
            int heads = c.Structure.Heads($"{path}.attn1", c.NumAttentionHeads);
            int ffInner = c.Structure.FeedForward($"{path}.ff", dim * 4);
            transformer_blocks.Add(new DiTBlock(dim, heads, c.AttentionHeadDim, ffInner, c.NumEmbedsAdaNorm!.Value, c.AttentionBias,
                c.ActivationFn == "gelu-approximate", c.NormEps, c.Dropout, c.NormElementwiseAffine));
        }
        proj_out_1 = nn.Linear(dim, 2 * dim);
        proj_out_2 = nn.Linear(dim, c.PatchSize * c.PatchSize * c.ResolvedOutChannels);
        RegisterComponents();
    }

    public override string ClassName => DiTConfig.ClassName;
    public override int InChannels => Config.InChannels;
    public override int OutChannels => Config.ResolvedOutChannels;
    public override int[] SampleSize => [Config.SampleSize, Config.SampleSize];
    public override int? NumClasses => Config.NumEmbedsAdaNorm;
    public override int? NullClass => Config.NumEmbedsAdaNorm;
    public override ModelStructure Structure => Config.Structure;
    public override JsonObject ConfigToJson() => Config.ToJson();

    public IList<nn.Module> Blocks => transformer_blocks;
    public PatchEmbed PosEmbed => pos_embed;
    public Linear ProjOut1 => proj_out_1;
    public Linear ProjOut2 => proj_out_2;

    /// <summary>LayerNorm epsilon of the output norm (diffusers hard-codes 1e-6).</summary>
    public const double OutputNormEps = 1e-6;

    /// <summary>
    /// The DiT paper's initialisation for training from scratch (diffusers' constructor leaves PyTorch defaults,
    /// because pretrained weights overwrite them): Xavier-uniform linears and patch projection with zero biases,
    /// N(0, 0.02) label tables and timestep MLPs, and adaLN-Zero — every block's modulation and the output layer
    /// start at zero, so each block starts as the identity and the model predicts 0. Uses the global torch seed.
    /// <para>With <paramref name="sharedQueryKey"/>, every attention layer's key projection starts equal to its query
    /// projection (a simple form of mimetic initialisation, Trockman &amp; Kolter 2023): each head's scores start as
    /// x_i·W^T W·x_j, which favours tokens that are alike, mostly in position while the input is noise, so attention
    /// starts local instead of uniform. On 8,000 MNIST digits, attention without it stayed uniform for thousands of steps.</para>
    /// </summary>
    public void InitializeForTraining(bool sharedQueryKey = false)
    {
        using var noGrad = no_grad();
        foreach (var (name, module) in named_modules())
        {
            switch (module)
            {
                case Linear linear when name.EndsWith("norm1.linear", StringComparison.Ordinal) || name is "proj_out_1" or "proj_out_2":
                    nn.init.zeros_(linear.weight);
                    if (linear.bias is not null) nn.init.zeros_(linear.bias);
                    break;
                case Linear linear when name.Contains(".emb.timestep_embedder.", StringComparison.Ordinal):
                    nn.init.normal_(linear.weight, 0, 0.02);
                    if (linear.bias is not null) nn.init.zeros_(linear.bias);
                    break;
                case Linear linear:
                    nn.init.xavier_uniform_(linear.weight);
                    if (linear.bias is not null) nn.init.zeros_(linear.bias);
                    break;
                case Embedding embedding:
                    nn.init.normal_(embedding.weight, 0, 0.02);
                    break;
                case Conv2d conv:
                    // Xavier over the flattened kernel, as for a linear layer on patches: fan_out = out_channels.
                    using (var flat = conv.weight.view(conv.weight.shape[0], -1)) nn.init.xavier_uniform_(flat);
                    if (conv.bias is not null) nn.init.zeros_(conv.bias);
                    break;
            }
        }
        if (sharedQueryKey)
            foreach (var block in transformer_blocks.OfType<DiTBlock>())
                block.Attn1.ToK.weight!.copy_(block.Attn1.ToQ.weight!);
    }

    /// <summary>The conditioning embedding the output layer reads: transformer block 0's, even when that block was removed.</summary>
    public CombinedTimestepLabelEmbeddings OutputEmbedding => FirstBlockEmbedding;

    public override Tensor Forward(Tensor sample, Conditioning conditioning)
    {
        conditioning.RejectUnused(ClassName, classLabels: true);
        var (timestep, classLabels) = (conditioning.Timestep, conditioning.ClassLabels);
        if (classLabels is null)
            throw new ArgumentException("DiTTransformer2DModel needs class_labels (use the null class, index num_embeds_ada_norm, for unconditional).");
        var c = Config;
        int p = c.PatchSize;
        long batch = sample.shape[0];
        var timesteps = BatchTimesteps(timestep, batch, sample.device);
        var labels = classLabels.dim() == 0 ? classLabels.unsqueeze(0).expand(batch) : classLabels;

        // 1. input
        var hiddenStates = pos_embed.call(sample);

        // 2. blocks
        for (int i = 0; i < transformer_blocks.Count; i++)
        {
            if (transformer_blocks[i] is DiTBlock dit)
                hiddenStates = Tap($"transformer_blocks.{i}", dit.Forward(hiddenStates, timesteps, labels));
        }

        // 3. output: modulated LayerNorm, projection, unpatchify
        var outputEmbedding = FirstBlockEmbedding.call(timesteps, labels);
        var chunks = proj_out_1.call(nn.functional.silu(outputEmbedding)).chunk(2, 1);
        var (shift, scale) = (chunks[0], chunks[1]);
        hiddenStates = nn.functional.layer_norm(hiddenStates, [c.InnerDim], null, null, OutputNormEps) * (scale.unsqueeze(1) + 1) + shift.unsqueeze(1);
        hiddenStates = proj_out_2.call(hiddenStates);
        long side = (long)Math.Round(Math.Sqrt(hiddenStates.shape[1]));
        int outChannels = c.ResolvedOutChannels;
        hiddenStates = hiddenStates.reshape(-1, side, side, p, p, outChannels);
        hiddenStates = einsum("nhwpqc->nchpwq", hiddenStates);
        return hiddenStates.reshape(-1, outChannels, side * p, side * p);
    }

    private CombinedTimestepLabelEmbeddings FirstBlockEmbedding => transformer_blocks[0] switch
    {
        DiTBlock b => b.Norm1.Emb,
        RemovedDiTBlock r => r.Emb!,
        _ => throw new InvalidOperationException("Unknown transformer block type."),
    };
}
