using DiffusionPrune.Models.Layers;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffusionPrune.Models;

/// <summary>
/// The constructor arguments of diffusers' <c>AutoencoderKL</c> (a pipeline's <c>vae/config.json</c>), with the same
/// JSON names and defaults. Keys diffusers' constructor does not take are ignored, as diffusers ignores them.
/// </summary>
public sealed record AutoencoderKLConfig
{
    public const string ClassName = "AutoencoderKL";

    /// <summary>The only encoder block diffusers' AutoencoderKL builds from its own configs.</summary>
    public const string DownEncoderBlock = "DownEncoderBlock2D";

    /// <summary>The only decoder block diffusers' AutoencoderKL builds from its own configs.</summary>
    public const string UpDecoderBlock = "UpDecoderBlock2D";

    public int InChannels { get; init; } = 3;
    public int OutChannels { get; init; } = 3;
    public string[] DownBlockTypes { get; init; } = [DownEncoderBlock];
    public string[] UpBlockTypes { get; init; } = [UpDecoderBlock];
    public int[] BlockOutChannels { get; init; } = [64];
    public int LayersPerBlock { get; init; } = 1;

    /// <summary>The ResNet blocks' activation. The encoder's and decoder's final activation is SiLU whatever this says, as in diffusers.</summary>
    public string ActFn { get; init; } = "silu";

    public int LatentChannels { get; init; } = 4;
    public int NormNumGroups { get; init; } = 32;

    /// <summary>The image size the VAE was trained at ([height, width]); diffusers uses it only to tile large images.</summary>
    public int[] SampleSize { get; init; } = [32, 32];

    /// <summary>Pipelines multiply the encoder's latents by this (after subtracting <see cref="ShiftFactor"/>) and undo it before decoding.</summary>
    public double ScalingFactor { get; init; } = 0.18215;

    /// <summary>Subtracted from latents before scaling (SD3 / Flux VAEs); null (Stable Diffusion 1.x / 2.x / XL) means none.</summary>
    public double? ShiftFactor { get; init; }

    /// <summary>Per-channel latent statistics some pipelines normalise with instead of one factor; null for most VAEs.</summary>
    public double[]? LatentsMean { get; init; }

    /// <inheritdoc cref="LatentsMean"/>
    public double[]? LatentsStd { get; init; }

    /// <summary>
    /// diffusers runs a half-precision VAE in float32 when this is set, because it overflows in float16. It is read and
    /// ignored here: this model always runs in float32 (half-precision weights are upcast when loaded).
    /// </summary>
    public bool ForceUpcast { get; init; } = true;

    /// <summary>Whether a 1x1 <c>quant_conv</c> follows the encoder (false in some newer VAEs).</summary>
    public bool UseQuantConv { get; init; } = true;

    /// <summary>Whether a 1x1 <c>post_quant_conv</c> precedes the decoder.</summary>
    public bool UsePostQuantConv { get; init; } = true;

    /// <summary>Whether the encoder's and decoder's mid blocks have their single-head attention.</summary>
    public bool MidBlockAddAttention { get; init; } = true;

    public static AutoencoderKLConfig FromJson(ConfigJson c)
    {
        if (c.ClassName is { } name && name != ClassName)
            throw new ModelFormatException($"{c.Source} describes a '{name}', not an {ClassName}.");
        // A null here would silently become the default through ConfigJson; these change the model or the latents, so refuse it.
        foreach (var key in new[] { "norm_num_groups", "scaling_factor", "block_out_channels", "latent_channels" })
            if (c.IsNull(key))
                throw new ModelFormatException($"{c.Source}: {key} null is not supported; give a value (diffusers' AutoencoderKL needs one).");
        var config = new AutoencoderKLConfig
        {
            InChannels = c.Int("in_channels", 3),
            OutChannels = c.Int("out_channels", 3),
            DownBlockTypes = c.StringArray("down_block_types", [DownEncoderBlock]),
            UpBlockTypes = c.StringArray("up_block_types", [UpDecoderBlock]),
            BlockOutChannels = c.IntArray("block_out_channels", [64]),
            LayersPerBlock = c.Int("layers_per_block", 1),
            ActFn = c.String("act_fn", "silu"),
            LatentChannels = c.Int("latent_channels", 4),
            NormNumGroups = c.Int("norm_num_groups", 32),
            SampleSize = c.Has("sample_size") && !c.IsNull("sample_size") ? ExpandSize(c.IntArray("sample_size", [32])) : [32, 32],
            ScalingFactor = c.Double("scaling_factor", 0.18215),
            ShiftFactor = c.Has("shift_factor") && !c.IsNull("shift_factor") ? c.Double("shift_factor", 0) : null,
            LatentsMean = NullableDoubleArray(c, "latents_mean"),
            LatentsStd = NullableDoubleArray(c, "latents_std"),
            ForceUpcast = c.Bool("force_upcast", true),
            UseQuantConv = c.Bool("use_quant_conv", true),
            UsePostQuantConv = c.Bool("use_post_quant_conv", true),
            MidBlockAddAttention = c.Bool("mid_block_add_attention", true),
        };
        config.Validate(c.Source);
        return config;
    }

    private static int[] ExpandSize(int[] size) => size.Length == 1 ? [size[0], size[0]] : size;

    /// <summary>A list of numbers, or null when absent or null (ConfigJson has no reader for number lists).</summary>
    private static double[]? NullableDoubleArray(ConfigJson c, string key)
    {
        if (!c.Has(key) || c.IsNull(key)) return null;
        try
        {
            return c.Root[key]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or JsonException or NullReferenceException)
        {
            throw new ModelFormatException($"{c.Source}: '{key}' must be a list of numbers or null, not {c.Root[key]?.ToJsonString()}.");
        }
    }

    public void Validate(string source = "config")
    {
        foreach (var (name, value) in new[] { ("in_channels", InChannels), ("out_channels", OutChannels), ("latent_channels", LatentChannels),
                     ("layers_per_block", LayersPerBlock), ("norm_num_groups", NormNumGroups) })
            if (value < 1) throw new ModelFormatException($"{source}: {name} must be at least 1, not {value}.");
        if (BlockOutChannels.Length == 0 || BlockOutChannels.Any(c => c < 1))
            throw new ModelFormatException($"{source}: block_out_channels must be positive numbers, not [{string.Join(", ", BlockOutChannels)}].");
        if (SampleSize.Length != 2 || SampleSize.Any(s => s < 1))
            throw new ModelFormatException($"{source}: sample_size must be one or two positive numbers, not [{string.Join(", ", SampleSize)}].");
        if (DownBlockTypes.Length != BlockOutChannels.Length || UpBlockTypes.Length != BlockOutChannels.Length)
            throw new ModelFormatException($"{source}: down_block_types ({DownBlockTypes.Length}), up_block_types ({UpBlockTypes.Length}) and " +
                $"block_out_channels ({BlockOutChannels.Length}) must have one entry per resolution each.");
        foreach (var t in DownBlockTypes.Where(t => t != DownEncoderBlock))
            throw new ModelFormatException($"{source}: down block type '{t}' is not supported; AutoencoderKL's encoder uses {DownEncoderBlock} only.");
        foreach (var t in UpBlockTypes.Where(t => t != UpDecoderBlock))
            throw new ModelFormatException($"{source}: up block type '{t}' is not supported; AutoencoderKL's decoder uses {UpDecoderBlock} only.");
        Activations.Validate(ActFn, source);
        foreach (var c in BlockOutChannels)
            if (c % NormNumGroups != 0)
                throw new ModelFormatException($"{source}: block_out_channels entry {c} is not a multiple of norm_num_groups {NormNumGroups}.");
        if (!(ScalingFactor > 0) || !double.IsFinite(ScalingFactor))
            throw new ModelFormatException($"{source}: scaling_factor must be a positive number, not {ScalingFactor}.");
        if (ShiftFactor is double shift && !double.IsFinite(shift))
            throw new ModelFormatException($"{source}: shift_factor must be a finite number or null, not {shift}.");
        foreach (var (name, values) in new[] { ("latents_mean", LatentsMean), ("latents_std", LatentsStd) })
        {
            if (values is null) continue;
            if (values.Length != LatentChannels)
                throw new ModelFormatException($"{source}: {name} has {values.Length} entries but latent_channels is {LatentChannels}; give one per latent channel.");
            if (values.Any(v => !double.IsFinite(v)) || (name == "latents_std" && values.Any(v => !(v > 0))))
                throw new ModelFormatException($"{source}: {name} must be finite{(name == "latents_std" ? " positive" : "")} numbers, not [{string.Join(", ", values)}].");
        }
    }

    public JsonObject ToJson()
    {
        static JsonArray Ints(int[] v) => new(v.Select(x => (JsonNode)JsonValue.Create(x)).ToArray());
        static JsonArray Strings(string[] v) => new(v.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray());
        static JsonArray? Doubles(double[]? v) => v is null ? null : new(v.Select(x => (JsonNode)JsonValue.Create(x)).ToArray());
        return new JsonObject
        {
            ["_class_name"] = ClassName,
            ["_diffusers_version"] = "0.40.0",
            ["act_fn"] = ActFn,
            ["block_out_channels"] = Ints(BlockOutChannels),
            ["down_block_types"] = Strings(DownBlockTypes),
            ["force_upcast"] = ForceUpcast,
            ["in_channels"] = InChannels,
            ["latent_channels"] = LatentChannels,
            ["latents_mean"] = Doubles(LatentsMean),
            ["latents_std"] = Doubles(LatentsStd),
            ["layers_per_block"] = LayersPerBlock,
            ["mid_block_add_attention"] = MidBlockAddAttention,
            ["norm_num_groups"] = NormNumGroups,
            ["out_channels"] = OutChannels,
            ["sample_size"] = SampleSize[0] == SampleSize[1] ? JsonValue.Create(SampleSize[0]) : Ints(SampleSize),
            ["scaling_factor"] = ScalingFactor,
            ["shift_factor"] = ShiftFactor,
            ["up_block_types"] = Strings(UpBlockTypes),
            ["use_post_quant_conv"] = UsePostQuantConv,
            ["use_quant_conv"] = UseQuantConv,
        };
    }
}
