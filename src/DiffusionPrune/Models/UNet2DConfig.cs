using DiffusionPrune.Models.Layers;
using System.Text.Json.Nodes;

namespace DiffusionPrune.Models;

/// <summary>
/// The constructor arguments of diffusers' <c>UNet2DModel</c>, with the same JSON names and defaults.
/// </summary>
public sealed record UNet2DConfig
{
    public const string ClassName = "UNet2DModel";

    public int[] SampleSize { get; init; } = [32, 32];
    public int InChannels { get; init; } = 3;
    public int OutChannels { get; init; } = 3;
    public bool CenterInputSample { get; init; }
    public string TimeEmbeddingType { get; init; } = "positional";
    public int? TimeEmbeddingDim { get; init; }
    public int FreqShift { get; init; }
    public bool FlipSinToCos { get; init; } = true;
    public string[] DownBlockTypes { get; init; } = ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"];
    public string? MidBlockType { get; init; } = "UNetMidBlock2D";
    public string[] UpBlockTypes { get; init; } = ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"];
    public int[] BlockOutChannels { get; init; } = [224, 448, 672, 896];
    public int LayersPerBlock { get; init; } = 2;
    public double MidBlockScaleFactor { get; init; } = 1;
    public int DownsamplePadding { get; init; } = 1;
    public string DownsampleType { get; init; } = "conv";
    public string UpsampleType { get; init; } = "conv";
    public double Dropout { get; init; }
    public string ActFn { get; init; } = "silu";
    public int? AttentionHeadDim { get; init; } = 8;
    public int NormNumGroups { get; init; } = 32;
    public int? AttnNormNumGroups { get; init; }
    public double NormEps { get; init; } = 1e-5;
    public string ResnetTimeScaleShift { get; init; } = "default";
    public bool AddAttention { get; init; } = true;
    public string? ClassEmbedType { get; init; }
    public int? NumClassEmbeds { get; init; }
    public int? NumTrainTimesteps { get; init; }

    /// <summary>Widths changed by pruning; empty for a model as diffusers made it.</summary>
    public ModelStructure Structure { get; init; } = new();

    public int TimeEmbedDim => TimeEmbeddingDim ?? BlockOutChannels[0] * 4;

    public static UNet2DConfig FromJson(ConfigJson c)
    {
        if (c.ClassName is { } name && name != ClassName)
            throw new ModelFormatException($"{c.Source} describes a {name}, not a {ClassName}.");
        if (c.IsNull("norm_num_groups"))
            throw new ModelFormatException($"{c.Source}: norm_num_groups null is not supported (diffusers' ResNet blocks need a group count).");
        var config = new UNet2DConfig
        {
            SampleSize = c.Has("sample_size") && !c.IsNull("sample_size") ? ExpandSize(c.IntArray("sample_size", [32])) : [32, 32],
            InChannels = c.Int("in_channels", 3),
            OutChannels = c.Int("out_channels", 3),
            CenterInputSample = c.Bool("center_input_sample", false),
            TimeEmbeddingType = c.String("time_embedding_type", "positional"),
            TimeEmbeddingDim = c.NullableInt("time_embedding_dim", null),
            FreqShift = c.Int("freq_shift", 0),
            FlipSinToCos = c.Bool("flip_sin_to_cos", true),
            DownBlockTypes = c.StringArray("down_block_types", ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]),
            MidBlockType = c.NullableString("mid_block_type", "UNetMidBlock2D"),
            UpBlockTypes = c.StringArray("up_block_types", ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
            BlockOutChannels = c.IntArray("block_out_channels", [224, 448, 672, 896]),
            LayersPerBlock = c.Int("layers_per_block", 2),
            MidBlockScaleFactor = c.Double("mid_block_scale_factor", 1),
            DownsamplePadding = c.Int("downsample_padding", 1),
            DownsampleType = c.String("downsample_type", "conv"),
            UpsampleType = c.String("upsample_type", "conv"),
            Dropout = c.Double("dropout", 0),
            ActFn = c.String("act_fn", "silu"),
            AttentionHeadDim = c.NullableInt("attention_head_dim", 8),
            NormNumGroups = c.Int("norm_num_groups", 32),
            AttnNormNumGroups = c.NullableInt("attn_norm_num_groups", null),
            NormEps = c.Double("norm_eps", 1e-5),
            ResnetTimeScaleShift = c.String("resnet_time_scale_shift", "default"),
            AddAttention = c.Bool("add_attention", true),
            ClassEmbedType = c.NullableString("class_embed_type", null),
            NumClassEmbeds = c.NullableInt("num_class_embeds", null),
            NumTrainTimesteps = c.NullableInt("num_train_timesteps", null),
            Structure = ModelStructure.FromConfig(c),
        };
        config.Validate(c.Source);
        return config;
    }

    private static int[] ExpandSize(int[] size) => size.Length == 1 ? [size[0], size[0]] : size;

    public void Validate(string source = "config")
    {
        foreach (var (name, value) in new[] { ("in_channels", InChannels), ("out_channels", OutChannels), ("layers_per_block", LayersPerBlock),
                     ("norm_num_groups", NormNumGroups), ("attention_head_dim", AttentionHeadDim ?? 1), ("attn_norm_num_groups", AttnNormNumGroups ?? 1),
                     ("time_embedding_dim", TimeEmbeddingDim ?? 1), ("num_class_embeds", NumClassEmbeds ?? 1), ("num_train_timesteps", NumTrainTimesteps ?? 1) })
            if (value < 1) throw new ModelFormatException($"{source}: {name} must be at least 1, not {value}.");
        if (SampleSize.Length != 2 || SampleSize.Any(s => s < 1))
            throw new ModelFormatException($"{source}: sample_size must be one or two positive numbers, not [{string.Join(", ", SampleSize)}].");
        if (BlockOutChannels.Length == 0 || BlockOutChannels.Any(c => c < 1))
            throw new ModelFormatException($"{source}: block_out_channels must be positive numbers, not [{string.Join(", ", BlockOutChannels)}].");
        if (DownsamplePadding is < 0 or > 1)
            throw new ModelFormatException($"{source}: downsample_padding must be 0 or 1 (the 3x3 downsampling convolution's padding), not {DownsamplePadding}.");
        if (!(NormEps > 0) || !double.IsFinite(NormEps)) throw new ModelFormatException($"{source}: norm_eps must be a positive number, not {NormEps}.");
        if (!(Dropout is >= 0 and < 1)) throw new ModelFormatException($"{source}: dropout must be in [0, 1), not {Dropout}.");
        if (!double.IsFinite(MidBlockScaleFactor)) throw new ModelFormatException($"{source}: mid_block_scale_factor must be finite, not {MidBlockScaleFactor}.");
        string[] downKnown = ["DownBlock2D", "AttnDownBlock2D"];
        string[] upKnown = ["UpBlock2D", "AttnUpBlock2D"];
        if (DownBlockTypes.Length != UpBlockTypes.Length)
            throw new ModelFormatException($"{source}: down_block_types has {DownBlockTypes.Length} entries but up_block_types has {UpBlockTypes.Length}; they must match.");
        if (BlockOutChannels.Length != DownBlockTypes.Length)
            throw new ModelFormatException($"{source}: block_out_channels has {BlockOutChannels.Length} entries but down_block_types has {DownBlockTypes.Length}; they must match.");
        foreach (var t in DownBlockTypes.Where(t => !downKnown.Contains(t.StartsWith("UNetRes") ? t[7..] : t)))
            throw new ModelFormatException($"{source}: down block type '{t}' is not supported (supported: {string.Join(", ", downKnown)}).");
        foreach (var t in UpBlockTypes.Where(t => !upKnown.Contains(t.StartsWith("UNetRes") ? t[7..] : t)))
            throw new ModelFormatException($"{source}: up block type '{t}' is not supported (supported: {string.Join(", ", upKnown)}).");
        if (MidBlockType is not null and not "UNetMidBlock2D")
            throw new ModelFormatException($"{source}: mid_block_type '{MidBlockType}' is not supported (UNetMidBlock2D or null).");
        if (ResnetTimeScaleShift is not ("default" or "scale_shift"))
            throw new ModelFormatException($"{source}: resnet_time_scale_shift '{ResnetTimeScaleShift}' is not supported (default, scale_shift).");
        if (DownsampleType is not ("conv" or "resnet") || UpsampleType is not ("conv" or "resnet"))
            throw new ModelFormatException($"{source}: downsample_type/upsample_type must be 'conv' or 'resnet'.");
        if (TimeEmbeddingType is not ("positional" or "fourier" or "learned"))
            throw new ModelFormatException($"{source}: time_embedding_type '{TimeEmbeddingType}' is not supported (positional, fourier, learned).");
        if (TimeEmbeddingType == "learned" && NumTrainTimesteps is null)
            throw new ModelFormatException($"{source}: time_embedding_type 'learned' needs num_train_timesteps.");
        if (ClassEmbedType is not (null or "timestep" or "identity"))
            throw new ModelFormatException($"{source}: class_embed_type '{ClassEmbedType}' is not supported (null, timestep, identity).");
        Activations.Validate(ActFn, source);
        foreach (var c in BlockOutChannels)
            if (c % NormNumGroups != 0)
                throw new ModelFormatException($"{source}: block_out_channels entry {c} is not a multiple of norm_num_groups {NormNumGroups}.");
    }

    /// <summary>Whether the model is conditioned on class labels.</summary>
    public bool IsClassConditional => ClassEmbedType is not null || NumClassEmbeds is not null;

    public JsonObject ToJson()
    {
        static JsonArray Ints(int[] v) => new(v.Select(x => (JsonNode)JsonValue.Create(x)).ToArray());
        static JsonArray Strings(string[] v) => new(v.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray());
        var o = new JsonObject
        {
            ["_class_name"] = ClassName,
            ["_diffusers_version"] = "0.40.0",
            ["act_fn"] = ActFn,
            ["add_attention"] = AddAttention,
            ["attention_head_dim"] = AttentionHeadDim,
            ["attn_norm_num_groups"] = AttnNormNumGroups,
            ["block_out_channels"] = Ints(BlockOutChannels),
            ["center_input_sample"] = CenterInputSample,
            ["class_embed_type"] = ClassEmbedType,
            ["down_block_types"] = Strings(DownBlockTypes),
            ["downsample_padding"] = DownsamplePadding,
            ["downsample_type"] = DownsampleType,
            ["dropout"] = Dropout,
            ["flip_sin_to_cos"] = FlipSinToCos,
            ["freq_shift"] = FreqShift,
            ["in_channels"] = InChannels,
            ["layers_per_block"] = LayersPerBlock,
            ["mid_block_scale_factor"] = MidBlockScaleFactor,
            ["mid_block_type"] = MidBlockType,
            ["norm_eps"] = NormEps,
            ["norm_num_groups"] = NormNumGroups,
            ["num_class_embeds"] = NumClassEmbeds,
            ["num_train_timesteps"] = NumTrainTimesteps,
            ["out_channels"] = OutChannels,
            ["resnet_time_scale_shift"] = ResnetTimeScaleShift,
            ["sample_size"] = SampleSize[0] == SampleSize[1] ? JsonValue.Create(SampleSize[0]) : Ints(SampleSize),
            ["time_embedding_dim"] = TimeEmbeddingDim,
            ["time_embedding_type"] = TimeEmbeddingType,
            ["up_block_types"] = Strings(UpBlockTypes),
            ["upsample_type"] = UpsampleType,
        };
        if (!Structure.IsEmpty) o[ModelStructure.JsonKey] = Structure.ToJson();
        return o;
    }
}
