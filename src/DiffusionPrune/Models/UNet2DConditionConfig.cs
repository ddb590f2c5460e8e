using DiffusionPrune.Models.Layers;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffusionPrune.Models;

/// <summary>
/// The constructor arguments of diffusers' <c>UNet2DConditionModel</c> (a Stable Diffusion pipeline's <c>unet/config.json</c>),
/// with the same JSON names and defaults. Settings diffusers accepts as one value or one per down block
/// (<c>attention_head_dim</c>, <c>cross_attention_dim</c>, <c>layers_per_block</c>, <c>transformer_layers_per_block</c>,
/// <c>only_cross_attention</c>) are held here one per down block, as diffusers expands them; up blocks take them reversed.
/// </summary>
/// <remarks>
/// Read and kept for the round trip but used by no block this model builds, exactly as in diffusers:
/// <c>resnet_skip_time_act</c>, <c>resnet_out_scale_factor</c>, <c>cross_attention_norm</c> (only the Simple/ResnetDownsample
/// blocks use them), <c>mid_block_only_cross_attention</c> (only UNetMidBlock2DSimpleCrossAttn) and
/// <c>addition_embed_type_num_heads</c> (only addition_embed_type "text"). Values that would build something this model does
/// not implement are refused by <see cref="Validate"/> with what to do.
/// </remarks>
public sealed record UNet2DConditionConfig
{
    public const string ClassName = "UNet2DConditionModel";

    public const string CrossAttnDownBlock = "CrossAttnDownBlock2D";
    public const string DownBlock = "DownBlock2D";
    public const string CrossAttnUpBlock = "CrossAttnUpBlock2D";
    public const string UpBlock = "UpBlock2D";
    public const string CrossAttnMidBlock = "UNetMidBlock2DCrossAttn";
    public const string ResnetMidBlock = "UNetMidBlock2D";

    /// <summary>[height, width] of the latents the model was trained on; null when the config has none (diffusers' default).</summary>
    public int[]? SampleSize { get; init; }
    public int InChannels { get; init; } = 4;
    public int OutChannels { get; init; } = 4;
    public bool CenterInputSample { get; init; }
    public bool FlipSinToCos { get; init; } = true;
    public int FreqShift { get; init; }
    public string[] DownBlockTypes { get; init; } = [CrossAttnDownBlock, CrossAttnDownBlock, CrossAttnDownBlock, DownBlock];
    public string? MidBlockType { get; init; } = CrossAttnMidBlock;
    public string[] UpBlockTypes { get; init; } = [UpBlock, CrossAttnUpBlock, CrossAttnUpBlock, CrossAttnUpBlock];

    /// <summary>Per down block: attn1 attends to the encoder states instead of the image tokens.</summary>
    public bool[] OnlyCrossAttention { get; init; } = [false, false, false, false];
    public int[] BlockOutChannels { get; init; } = [320, 640, 1280, 1280];

    /// <summary>ResNet blocks per down block (up blocks have one more).</summary>
    public int[] LayersPerBlock { get; init; } = [2, 2, 2, 2];
    public int DownsamplePadding { get; init; } = 1;
    public double MidBlockScaleFactor { get; init; } = 1;
    public double Dropout { get; init; }
    public string ActFn { get; init; } = "silu";
    public int NormNumGroups { get; init; } = 32;
    public double NormEps { get; init; } = 1e-5;

    /// <summary>Per down block: the width of the encoder states its cross-attention reads.</summary>
    public int[] CrossAttentionDim { get; init; } = [1280, 1280, 1280, 1280];

    /// <summary>Per down block: BasicTransformerBlocks in each of its Transformer2DModels (the mid block uses the last).</summary>
    public int[] TransformerLayersPerBlock { get; init; } = [1, 1, 1, 1];

    /// <summary>
    /// Per down block, what diffusers calls <c>attention_head_dim</c> and uses as the NUMBER of heads (its
    /// <c>num_attention_heads = num_attention_heads or attention_head_dim</c>; see diffusers issue 2011). A block of C
    /// channels then has heads of C / this width. Up blocks take the list reversed, the mid block the last entry.
    /// </summary>
    public int[] AttentionHeadDim { get; init; } = [8, 8, 8, 8];
    public bool DualCrossAttention { get; init; }
    public bool UseLinearProjection { get; init; }
    public string? ClassEmbedType { get; init; }
    public string? AdditionEmbedType { get; init; }
    public int? AdditionTimeEmbedDim { get; init; }
    public int? NumClassEmbeds { get; init; }

    /// <summary>diffusers upcasts q and k to float32 in half precision when set; this model always computes in float32.</summary>
    public bool UpcastAttention { get; init; }
    public string ResnetTimeScaleShift { get; init; } = "default";
    public bool ResnetSkipTimeAct { get; init; }
    public double ResnetOutScaleFactor { get; init; } = 1.0;
    public string TimeEmbeddingType { get; init; } = "positional";
    public int? TimeEmbeddingDim { get; init; }
    public string? TimeEmbeddingActFn { get; init; }
    public string? TimestepPostAct { get; init; }
    public int ConvInKernel { get; init; } = 3;
    public int ConvOutKernel { get; init; } = 3;

    /// <summary>Input width of the "projection" class embedding and of SDXL's text_time add_embedding.</summary>
    public int? ProjectionClassEmbeddingsInputDim { get; init; }
    public string AttentionType { get; init; } = "default";
    public bool ClassEmbeddingsConcat { get; init; }
    public bool? MidBlockOnlyCrossAttention { get; init; }
    public string? CrossAttentionNorm { get; init; }
    public int AdditionEmbedTypeNumHeads { get; init; } = 64;

    /// <summary>Widths changed by pruning; empty for a model as diffusers made it.</summary>
    public ModelStructure Structure { get; init; } = new();

    /// <summary>Width of the time embedding every ResNet block receives a projection of (before class_embeddings_concat doubles it).</summary>
    public int TimeEmbedDim => TimeEmbeddingDim ?? BlockOutChannels[0] * 4;

    /// <summary>Width of the embedding the blocks take: the time embedding, twice it when the class embedding is concatenated.</summary>
    public int BlocksTimeEmbedDim => ClassEmbeddingsConcat ? 2 * TimeEmbedDim : TimeEmbedDim;

    /// <summary>The number of heads of the attention in down block <paramref name="i"/> (the quirk described at <see cref="AttentionHeadDim"/>).</summary>
    public int NumAttentionHeads(int i) => AttentionHeadDim[i];

    /// <summary>Whether class labels (or, for "identity"/"projection", class vectors) must be passed.</summary>
    public bool IsClassConditional => ClassEmbedType is not null || NumClassEmbeds is not null;

    public static UNet2DConditionConfig FromJson(ConfigJson c)
    {
        if (c.ClassName is { } name && name != ClassName)
            throw new ModelFormatException($"{c.Source} describes a '{name}', not a {ClassName}.");
        // A null here would silently become the default through ConfigJson, or crash diffusers itself; refuse it by name.
        foreach (var (key, why) in new[]
                 {
                     ("norm_num_groups", "this model needs a group count for its ResNet blocks and output norm"),
                     ("attention_head_dim", "diffusers derives the number of heads from it"),
                     ("cross_attention_dim", "the cross-attention blocks need the text width"),
                     ("block_out_channels", "give the channels per resolution"),
                 })
            if (c.IsNull(key))
                throw new ModelFormatException($"{c.Source}: {key} null is not supported ({why}).");
        if (c.Has("num_attention_heads") && !c.IsNull("num_attention_heads"))
            throw new ModelFormatException($"{c.Source}: num_attention_heads must be null. diffusers' UNet2DConditionModel refuses it too " +
                "(a naming issue, diffusers issue 2011): give the number of heads as attention_head_dim instead.");
        foreach (var (key, why) in new[]
                 {
                     ("reverse_transformer_layers_per_block", "per-layer transformer depths (asymmetric U-Nets) are not supported; give one depth per block"),
                     ("time_cond_proj_dim", "timestep conditioning (LCM's cond_proj) is not supported"),
                     ("encoder_hid_dim", "projecting the encoder states (encoder_hid_proj) is not supported"),
                     ("encoder_hid_dim_type", "projecting the encoder states (encoder_hid_proj) is not supported"),
                 })
            if (c.Has(key) && !c.IsNull(key))
                throw new ModelFormatException($"{c.Source}: {key} must be null: {why}.");

        var downBlockTypes = c.StringArray("down_block_types", [CrossAttnDownBlock, CrossAttnDownBlock, CrossAttnDownBlock, DownBlock]);
        int n = downBlockTypes.Length;
        var config = new UNet2DConditionConfig
        {
            SampleSize = c.Has("sample_size") && !c.IsNull("sample_size") ? ExpandSize(c.IntArray("sample_size", [64])) : null,
            InChannels = c.Int("in_channels", 4),
            OutChannels = c.Int("out_channels", 4),
            CenterInputSample = c.Bool("center_input_sample", false),
            FlipSinToCos = c.Bool("flip_sin_to_cos", true),
            FreqShift = c.Int("freq_shift", 0),
            DownBlockTypes = downBlockTypes,
            MidBlockType = c.NullableString("mid_block_type", CrossAttnMidBlock),
            UpBlockTypes = c.StringArray("up_block_types", [UpBlock, CrossAttnUpBlock, CrossAttnUpBlock, CrossAttnUpBlock]),
            OnlyCrossAttention = PerBlockBools(c, "only_cross_attention", false, n),
            BlockOutChannels = c.IntArray("block_out_channels", [320, 640, 1280, 1280]),
            LayersPerBlock = PerBlockInts(c, "layers_per_block", 2, n),
            DownsamplePadding = c.Int("downsample_padding", 1),
            MidBlockScaleFactor = c.Double("mid_block_scale_factor", 1),
            Dropout = c.Double("dropout", 0),
            ActFn = c.String("act_fn", "silu"),
            NormNumGroups = c.Int("norm_num_groups", 32),
            NormEps = c.Double("norm_eps", 1e-5),
            CrossAttentionDim = PerBlockInts(c, "cross_attention_dim", 1280, n),
            TransformerLayersPerBlock = PerBlockInts(c, "transformer_layers_per_block", 1, n),
            AttentionHeadDim = PerBlockInts(c, "attention_head_dim", 8, n),
            DualCrossAttention = c.Bool("dual_cross_attention", false),
            UseLinearProjection = c.Bool("use_linear_projection", false),
            ClassEmbedType = c.NullableString("class_embed_type", null),
            AdditionEmbedType = c.NullableString("addition_embed_type", null),
            AdditionTimeEmbedDim = c.NullableInt("addition_time_embed_dim", null),
            NumClassEmbeds = c.NullableInt("num_class_embeds", null),
            UpcastAttention = c.Bool("upcast_attention", false),
            ResnetTimeScaleShift = c.String("resnet_time_scale_shift", "default"),
            ResnetSkipTimeAct = c.Bool("resnet_skip_time_act", false),
            ResnetOutScaleFactor = c.Double("resnet_out_scale_factor", 1.0),
            TimeEmbeddingType = c.String("time_embedding_type", "positional"),
            TimeEmbeddingDim = c.NullableInt("time_embedding_dim", null),
            TimeEmbeddingActFn = c.NullableString("time_embedding_act_fn", null),
            TimestepPostAct = c.NullableString("timestep_post_act", null),
            ConvInKernel = c.Int("conv_in_kernel", 3),
            ConvOutKernel = c.Int("conv_out_kernel", 3),
            ProjectionClassEmbeddingsInputDim = c.NullableInt("projection_class_embeddings_input_dim", null),
            AttentionType = c.String("attention_type", "default"),
            ClassEmbeddingsConcat = c.Bool("class_embeddings_concat", false),
            MidBlockOnlyCrossAttention = c.Has("mid_block_only_cross_attention") && !c.IsNull("mid_block_only_cross_attention")
                ? c.Bool("mid_block_only_cross_attention", false) : null,
            CrossAttentionNorm = c.NullableString("cross_attention_norm", null),
            AdditionEmbedTypeNumHeads = c.Int("addition_embed_type_num_heads", 64),
            Structure = ModelStructure.FromConfig(c),
        };
        config.Validate(c.Source);
        return config;
    }

    private static int[] ExpandSize(int[] size) => size.Length == 1 ? [size[0], size[0]] : size;

    /// <summary>One number for every down block, or a list with one per down block (diffusers' <c>isinstance(x, int)</c> expansion).</summary>
    private static int[] PerBlockInts(ConfigJson c, string key, int @default, int blocks)
    {
        if (!c.Has(key) || c.IsNull(key)) return Enumerable.Repeat(@default, blocks).ToArray();
        if (c.Root[key] is JsonArray array)
        {
            if (array.Any(x => x is JsonArray))
                throw new ModelFormatException($"{c.Source}: {key} holds nested lists (per-layer values); give one number per down block.");
            var values = c.IntArray(key, []);
            if (values.Length != blocks)
                throw new ModelFormatException($"{c.Source}: {key} has {values.Length} entries but down_block_types has {blocks}; give one per down block or a single number.");
            return values;
        }
        return Enumerable.Repeat(c.Int(key, @default), blocks).ToArray();
    }

    /// <summary>A boolean for every down block, or a list with one per down block.</summary>
    private static bool[] PerBlockBools(ConfigJson c, string key, bool @default, int blocks)
    {
        if (!c.Has(key) || c.IsNull(key)) return Enumerable.Repeat(@default, blocks).ToArray();
        if (c.Root[key] is not JsonArray array) return Enumerable.Repeat(c.Bool(key, @default), blocks).ToArray();
        bool[] values;
        try
        {
            values = array.Select(x => x!.GetValue<bool>()).ToArray();
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or JsonException or NullReferenceException)
        {
            throw new ModelFormatException($"{c.Source}: '{key}' must be true, false or a list of them, not {array.ToJsonString()}.");
        }
        if (values.Length != blocks)
            throw new ModelFormatException($"{c.Source}: {key} has {values.Length} entries but down_block_types has {blocks}; give one per down block or a single value.");
        return values;
    }

    public void Validate(string source = "config")
    {
        foreach (var (name, value) in new[]
                 {
                     ("in_channels", InChannels), ("out_channels", OutChannels), ("norm_num_groups", NormNumGroups),
                     ("time_embedding_dim", TimeEmbeddingDim ?? 1), ("num_class_embeds", NumClassEmbeds ?? 1),
                     ("projection_class_embeddings_input_dim", ProjectionClassEmbeddingsInputDim ?? 1),
                     ("addition_time_embed_dim", AdditionTimeEmbedDim ?? 1), ("addition_embed_type_num_heads", AdditionEmbedTypeNumHeads),
                 })
            if (value < 1) throw new ModelFormatException($"{source}: {name} must be at least 1, not {value}.");
        if (SampleSize is { } size && (size.Length != 2 || size.Any(s => s < 1)))
            throw new ModelFormatException($"{source}: sample_size must be one or two positive numbers (or null), not [{string.Join(", ", size)}].");
        if (BlockOutChannels.Length == 0 || BlockOutChannels.Any(c => c < 1))
            throw new ModelFormatException($"{source}: block_out_channels must be positive numbers, not [{string.Join(", ", BlockOutChannels)}].");
        int n = DownBlockTypes.Length;
        if (UpBlockTypes.Length != n)
            throw new ModelFormatException($"{source}: down_block_types has {n} entries but up_block_types has {UpBlockTypes.Length}; they must match.");
        if (BlockOutChannels.Length != n)
            throw new ModelFormatException($"{source}: block_out_channels has {BlockOutChannels.Length} entries but down_block_types has {n}; they must match.");
        foreach (var (name, length) in new[]
                 {
                     ("only_cross_attention", OnlyCrossAttention.Length), ("layers_per_block", LayersPerBlock.Length),
                     ("cross_attention_dim", CrossAttentionDim.Length), ("transformer_layers_per_block", TransformerLayersPerBlock.Length),
                     ("attention_head_dim", AttentionHeadDim.Length),
                 })
            if (length != n)
                throw new ModelFormatException($"{source}: {name} has {length} entries but down_block_types has {n}; give one per down block or a single value.");
        foreach (var (name, values) in new[]
                 {
                     ("layers_per_block", LayersPerBlock), ("cross_attention_dim", CrossAttentionDim),
                     ("transformer_layers_per_block", TransformerLayersPerBlock), ("attention_head_dim", AttentionHeadDim),
                 })
            if (values.Any(v => v < 1))
                throw new ModelFormatException($"{source}: {name} entries must be at least 1, not [{string.Join(", ", values)}].");

        string[] downKnown = [CrossAttnDownBlock, DownBlock];
        string[] upKnown = [CrossAttnUpBlock, UpBlock];
        foreach (var t in DownBlockTypes.Where(t => !downKnown.Contains(t)))
            throw new ModelFormatException($"{source}: down block type '{t}' is not supported (supported: {string.Join(", ", downKnown)}).");
        foreach (var t in UpBlockTypes.Where(t => !upKnown.Contains(t)))
            throw new ModelFormatException($"{source}: up block type '{t}' is not supported (supported: {string.Join(", ", upKnown)}).");
        if (MidBlockType is not (null or CrossAttnMidBlock or ResnetMidBlock))
            throw new ModelFormatException($"{source}: mid_block_type '{MidBlockType}' is not supported ({CrossAttnMidBlock}, {ResnetMidBlock} or null).");

        // Every Transformer2DModel splits its channels into heads: the down block's, the up block at the same resolution
        // (reversed lists pair the same entries), and the mid block's (the last entry).
        for (int i = 0; i < n; i++)
        {
            bool usesHeads = DownBlockTypes[i] == CrossAttnDownBlock || UpBlockTypes[n - 1 - i] == CrossAttnUpBlock
                || (i == n - 1 && MidBlockType == CrossAttnMidBlock);
            if (usesHeads && BlockOutChannels[i] % AttentionHeadDim[i] != 0)
                throw new ModelFormatException($"{source}: block_out_channels entry {BlockOutChannels[i]} does not split into attention_head_dim " +
                    $"{AttentionHeadDim[i]} heads (diffusers reads attention_head_dim as the number of heads here); give a divisor of the channels.");
        }
        foreach (var c in BlockOutChannels)
            if (c % NormNumGroups != 0)
                throw new ModelFormatException($"{source}: block_out_channels entry {c} is not a multiple of norm_num_groups {NormNumGroups}.");

        if (DownsamplePadding is < 0 or > 1)
            throw new ModelFormatException($"{source}: downsample_padding must be 0 or 1 (the 3x3 downsampling convolution's padding), not {DownsamplePadding}.");
        foreach (var (name, kernel) in new[] { ("conv_in_kernel", ConvInKernel), ("conv_out_kernel", ConvOutKernel) })
            if (kernel < 1 || kernel % 2 == 0)
                throw new ModelFormatException($"{source}: {name} must be an odd positive number (the padding keeps the size), not {kernel}.");
        if (!(NormEps > 0) || !double.IsFinite(NormEps)) throw new ModelFormatException($"{source}: norm_eps must be a positive number, not {NormEps}.");
        if (!(Dropout is >= 0 and < 1)) throw new ModelFormatException($"{source}: dropout must be in [0, 1), not {Dropout}.");
        if (!double.IsFinite(MidBlockScaleFactor)) throw new ModelFormatException($"{source}: mid_block_scale_factor must be finite, not {MidBlockScaleFactor}.");
        if (!double.IsFinite(ResnetOutScaleFactor)) throw new ModelFormatException($"{source}: resnet_out_scale_factor must be finite, not {ResnetOutScaleFactor}.");
        if (ResnetTimeScaleShift is not ("default" or "scale_shift"))
            throw new ModelFormatException($"{source}: resnet_time_scale_shift '{ResnetTimeScaleShift}' is not supported (default, scale_shift).");
        Activations.Validate(ActFn, source);
        if (TimeEmbeddingActFn is not null) Activations.Validate(TimeEmbeddingActFn, source);
        if (TimestepPostAct is not null) Activations.Validate(TimestepPostAct, source);

        if (TimeEmbeddingType != "positional")
            throw new ModelFormatException($"{source}: time_embedding_type '{TimeEmbeddingType}' is not supported (positional; Stable Diffusion uses it).");
        if (DualCrossAttention)
            throw new ModelFormatException($"{source}: dual_cross_attention (DualTransformer2DModel) is not supported; it must be false.");
        if (AttentionType != "default")
            throw new ModelFormatException($"{source}: attention_type '{AttentionType}' is not supported (default; the gated GLIGEN variants are not).");
        if (ClassEmbedType is not (null or "timestep" or "identity" or "projection"))
            throw new ModelFormatException($"{source}: class_embed_type '{ClassEmbedType}' is not supported (null, timestep, identity, projection).");
        if (ClassEmbedType == "projection" && ProjectionClassEmbeddingsInputDim is null)
            throw new ModelFormatException($"{source}: class_embed_type 'projection' needs projection_class_embeddings_input_dim (the class vectors' width).");
        if (ClassEmbeddingsConcat && !IsClassConditional)
            throw new ModelFormatException($"{source}: class_embeddings_concat is set but the model has no class embedding (class_embed_type or num_class_embeds).");
        if (AdditionEmbedType is not (null or "text_time"))
            throw new ModelFormatException($"{source}: addition_embed_type '{AdditionEmbedType}' is not supported (null, or text_time as in Stable Diffusion XL).");
        if (AdditionEmbedType == "text_time" && (AdditionTimeEmbedDim is null || ProjectionClassEmbeddingsInputDim is null))
            throw new ModelFormatException($"{source}: addition_embed_type 'text_time' needs addition_time_embed_dim (the width of each time id's sinusoidal " +
                "features) and projection_class_embeddings_input_dim (text_embeds width + number of time ids x addition_time_embed_dim).");
    }

    public JsonObject ToJson()
    {
        static JsonArray Ints(int[] v) => new(v.Select(x => (JsonNode)JsonValue.Create(x)).ToArray());
        static JsonArray Strings(string[] v) => new(v.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray());
        // One value when every block has the same, as diffusers' own configs write them (and read them back identically).
        static JsonNode PerBlock(int[] v) => v.Distinct().Count() == 1 ? JsonValue.Create(v[0]) : Ints(v);
        static JsonNode PerBlockBool(bool[] v) => v.Distinct().Count() == 1
            ? JsonValue.Create(v[0])
            : new JsonArray(v.Select(x => (JsonNode)JsonValue.Create(x)).ToArray());
        var o = new JsonObject
        {
            ["_class_name"] = ClassName,
            ["_diffusers_version"] = "0.40.0",
            ["act_fn"] = ActFn,
            ["addition_embed_type"] = AdditionEmbedType,
            ["addition_embed_type_num_heads"] = AdditionEmbedTypeNumHeads,
            ["addition_time_embed_dim"] = AdditionTimeEmbedDim,
            ["attention_head_dim"] = PerBlock(AttentionHeadDim),
            ["attention_type"] = AttentionType,
            ["block_out_channels"] = Ints(BlockOutChannels),
            ["center_input_sample"] = CenterInputSample,
            ["class_embed_type"] = ClassEmbedType,
            ["class_embeddings_concat"] = ClassEmbeddingsConcat,
            ["conv_in_kernel"] = ConvInKernel,
            ["conv_out_kernel"] = ConvOutKernel,
            ["cross_attention_dim"] = PerBlock(CrossAttentionDim),
            ["cross_attention_norm"] = CrossAttentionNorm,
            ["down_block_types"] = Strings(DownBlockTypes),
            ["downsample_padding"] = DownsamplePadding,
            ["dropout"] = Dropout,
            ["dual_cross_attention"] = DualCrossAttention,
            ["encoder_hid_dim"] = null,
            ["encoder_hid_dim_type"] = null,
            ["flip_sin_to_cos"] = FlipSinToCos,
            ["freq_shift"] = FreqShift,
            ["in_channels"] = InChannels,
            ["layers_per_block"] = PerBlock(LayersPerBlock),
            ["mid_block_only_cross_attention"] = MidBlockOnlyCrossAttention,
            ["mid_block_scale_factor"] = MidBlockScaleFactor,
            ["mid_block_type"] = MidBlockType,
            ["norm_eps"] = NormEps,
            ["norm_num_groups"] = NormNumGroups,
            ["num_attention_heads"] = null,
            ["num_class_embeds"] = NumClassEmbeds,
            ["only_cross_attention"] = PerBlockBool(OnlyCrossAttention),
            ["out_channels"] = OutChannels,
            ["projection_class_embeddings_input_dim"] = ProjectionClassEmbeddingsInputDim,
            ["resnet_out_scale_factor"] = ResnetOutScaleFactor,
            ["resnet_skip_time_act"] = ResnetSkipTimeAct,
            ["resnet_time_scale_shift"] = ResnetTimeScaleShift,
            ["reverse_transformer_layers_per_block"] = null,
            ["sample_size"] = SampleSize is null ? null : SampleSize[0] == SampleSize[1] ? JsonValue.Create(SampleSize[0]) : Ints(SampleSize),
            ["time_cond_proj_dim"] = null,
            ["time_embedding_act_fn"] = TimeEmbeddingActFn,
            ["time_embedding_dim"] = TimeEmbeddingDim,
            ["time_embedding_type"] = TimeEmbeddingType,
            ["timestep_post_act"] = TimestepPostAct,
            ["transformer_layers_per_block"] = PerBlock(TransformerLayersPerBlock),
            ["up_block_types"] = Strings(UpBlockTypes),
            ["upcast_attention"] = UpcastAttention,
            ["use_linear_projection"] = UseLinearProjection,
        };
        if (!Structure.IsEmpty) o[ModelStructure.JsonKey] = Structure.ToJson();
        return o;
    }
}
