using System.Text.Json.Nodes;

namespace DiffusionPrune.Models;

/// <summary>The constructor arguments of diffusers' <c>DiTTransformer2DModel</c>, same JSON names and defaults.</summary>
public sealed record DiTConfig
{
    public const string ClassName = "DiTTransformer2DModel";

    public int NumAttentionHeads { get; init; } = 16;
    public int AttentionHeadDim { get; init; } = 72;
    public int InChannels { get; init; } = 4;
    public int? OutChannels { get; init; }
    public int NumLayers { get; init; } = 28;
    public double Dropout { get; init; }
    public int NormNumGroups { get; init; } = 32;
    public bool AttentionBias { get; init; } = true;
    public int SampleSize { get; init; } = 32;
    public int PatchSize { get; init; } = 2;
    public string ActivationFn { get; init; } = "gelu-approximate";
    public int? NumEmbedsAdaNorm { get; init; } = 1000;
    public bool UpcastAttention { get; init; }
    public string NormType { get; init; } = "ada_norm_zero";
    public bool NormElementwiseAffine { get; init; }
    public double NormEps { get; init; } = 1e-5;

    public ModelStructure Structure { get; init; } = new();

    public int InnerDim => NumAttentionHeads * AttentionHeadDim;
    public int ResolvedOutChannels => OutChannels ?? InChannels;

    public static DiTConfig FromJson(ConfigJson c)
    {
        if (c.ClassName is { } name && name != ClassName)
            throw new ModelFormatException($"{c.Source} describes a {name}, not a {ClassName}.");
        var config = new DiTConfig
        {
            NumAttentionHeads = c.Int("num_attention_heads", 16),
            AttentionHeadDim = c.Int("attention_head_dim", 72),
            InChannels = c.Int("in_channels", 4),
            OutChannels = c.NullableInt("out_channels", null),
            NumLayers = c.Int("num_layers", 28),
            Dropout = c.Double("dropout", 0),
            NormNumGroups = c.Int("norm_num_groups", 32),
            AttentionBias = c.Bool("attention_bias", true),
            SampleSize = c.Int("sample_size", 32),
            PatchSize = c.Int("patch_size", 2),
            ActivationFn = c.String("activation_fn", "gelu-approximate"),
            NumEmbedsAdaNorm = c.NullableInt("num_embeds_ada_norm", 1000),
            UpcastAttention = c.Bool("upcast_attention", false),
            NormType = c.String("norm_type", "ada_norm_zero"),
            NormElementwiseAffine = c.Bool("norm_elementwise_affine", false),
            NormEps = c.Double("norm_eps", 1e-5),
            Structure = ModelStructure.FromConfig(c),
        };
        config.Validate(c.Source);
        return config;
    }

    public void Validate(string source = "config")
    {
        foreach (var (name, value) in new[] { ("num_attention_heads", NumAttentionHeads), ("attention_head_dim", AttentionHeadDim), ("in_channels", InChannels),
                     ("num_layers", NumLayers), ("norm_num_groups", NormNumGroups), ("sample_size", SampleSize), ("patch_size", PatchSize), ("out_channels", ResolvedOutChannels) })
            if (value < 1) throw new ModelFormatException($"{source}: {name} must be at least 1, not {value}.");
        if (NumEmbedsAdaNorm is < 1) throw new ModelFormatException($"{source}: num_embeds_ada_norm must be at least 1, not {NumEmbedsAdaNorm}.");
        if (!(NormEps > 0) || !double.IsFinite(NormEps)) throw new ModelFormatException($"{source}: norm_eps must be a positive number, not {NormEps}.");
        if (!(Dropout is >= 0 and < 1)) throw new ModelFormatException($"{source}: dropout must be in [0, 1), not {Dropout}.");
        if (NormType != "ada_norm_zero")
            throw new ModelFormatException($"{source}: DiT norm_type '{NormType}' is not supported (diffusers' DiTTransformer2DModel only implements ada_norm_zero).");
        if (NumEmbedsAdaNorm is null)
            throw new ModelFormatException($"{source}: num_embeds_ada_norm cannot be null with ada_norm_zero.");
        if (ActivationFn is not ("gelu-approximate" or "gelu"))
            throw new ModelFormatException($"{source}: activation_fn '{ActivationFn}' is not supported (gelu-approximate, gelu).");
        if (SampleSize % PatchSize != 0)
            throw new ModelFormatException($"{source}: sample_size {SampleSize} is not a multiple of patch_size {PatchSize}.");
        if (InnerDim % 4 != 0)
            throw new ModelFormatException($"{source}: the width {InnerDim} must be a multiple of 4 for 2-D sin-cos positions.");
    }

    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["_class_name"] = ClassName,
            ["_diffusers_version"] = "0.40.0",
            ["activation_fn"] = ActivationFn,
            ["attention_bias"] = AttentionBias,
            ["attention_head_dim"] = AttentionHeadDim,
            ["dropout"] = Dropout,
            ["in_channels"] = InChannels,
            ["norm_elementwise_affine"] = NormElementwiseAffine,
            ["norm_eps"] = NormEps,
            ["norm_num_groups"] = NormNumGroups,
            ["norm_type"] = NormType,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_embeds_ada_norm"] = NumEmbedsAdaNorm,
            ["num_layers"] = NumLayers,
            ["out_channels"] = OutChannels,
            ["patch_size"] = PatchSize,
            ["sample_size"] = SampleSize,
            ["upcast_attention"] = UpcastAttention,
        };
        if (!Structure.IsEmpty) o[ModelStructure.JsonKey] = Structure.ToJson();
        return o;
    }
}
