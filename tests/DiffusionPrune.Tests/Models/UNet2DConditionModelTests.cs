using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Models;

/// <summary>
/// UNet2DConditionModel against unet2d-condition-small, whose output diffusers computed from the fixture's latents,
/// timesteps and text states; parameter names and counts of other configurations against diffusers' construction worked
/// out by hand here; SDXL's text_time conditioning; config validation and strict loading.
/// </summary>
public class UNet2DConditionModelTests
{
    private static string UNetFolder => Fixtures.Diffusers("unet2d-condition-small", "model");
    private static string IoFile => Fixtures.Diffusers("unet2d-condition-small", "io.safetensors");

    private static JsonObject FixtureConfigJson() => JsonNode.Parse(File.ReadAllText(Path.Combine(UNetFolder, "config.json")))!.AsObject();

    private static UNet2DConditionConfig ConfigWith(params (string Key, string Json)[] changes)
    {
        var root = FixtureConfigJson();
        foreach (var (key, json) in changes) root[key] = JsonNode.Parse(json);
        return UNet2DConditionConfig.FromJson(new ConfigJson(root, "unet/config.json"));
    }

    private static Dictionary<string, long[]> Shapes(nn.Module model) => model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);

    private static bool Identical(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    // diffusers' construction, parameter by parameter: what each module of UNet2DConditionModel holds.
    private static long ResnetParameters(long inC, long outC, long temb) =>
        2 * inC + (inC * outC * 9 + outC) + (temb * outC + outC) + 2 * outC + (outC * outC * 9 + outC) + (inC != outC ? inC * outC + outC : 0);

    private static long TransformerBlockParameters(long c, long crossDim, bool onlyCrossAttention)
    {
        long kv1 = onlyCrossAttention ? crossDim : c;
        long attn1 = c * c + 2 * kv1 * c + (c * c + c); // to_q, to_k, to_v without bias; to_out.0 with
        long attn2 = c * c + 2 * crossDim * c + (c * c + c);
        long ff = (c * 8 * c + 8 * c) + (4 * c * c + c); // GEGLU proj to 2 x 4c, then 4c -> c
        return 3 * 2 * c + attn1 + attn2 + ff;
    }

    private static long Transformer2DParameters(long c, int layers, long crossDim, bool onlyCrossAttention) =>
        2 * c + (c * c + c) + (c * c + c) + layers * TransformerBlockParameters(c, crossDim, onlyCrossAttention); // norm, proj_in, proj_out

    private static long ConvParameters(long inC, long outC, long k) => inC * outC * k * k + outC;

    /// <summary>diffusers' UNet2DConditionModel parameter count for a config without class or added embeddings.</summary>
    private static long ExpectedParameters(UNet2DConditionConfig c)
    {
        int n = c.BlockOutChannels.Length;
        long[] ch = c.BlockOutChannels.Select(x => (long)x).ToArray();
        long t = c.TimeEmbedDim;
        long total = ConvParameters(c.InChannels, ch[0], c.ConvInKernel) + (ch[0] * t + t) + (t * t + t);
        long output = ch[0];
        for (int i = 0; i < n; i++)
        {
            long input = output;
            output = ch[i];
            for (int j = 0; j < c.LayersPerBlock[i]; j++)
            {
                total += ResnetParameters(j == 0 ? input : output, output, t);
                if (c.DownBlockTypes[i] == "CrossAttnDownBlock2D")
                    total += Transformer2DParameters(output, c.TransformerLayersPerBlock[i], c.CrossAttentionDim[i], c.OnlyCrossAttention[i]);
            }
            if (i < n - 1) total += ConvParameters(output, output, 3);
        }
        if (c.MidBlockType == "UNetMidBlock2DCrossAttn")
            total += 2 * ResnetParameters(ch[^1], ch[^1], t) + Transformer2DParameters(ch[^1], c.TransformerLayersPerBlock[^1], c.CrossAttentionDim[^1], false);
        var reversed = ch.Reverse().ToArray();
        output = reversed[0];
        for (int i = 0; i < n; i++)
        {
            int r = n - 1 - i;
            long prev = output;
            output = reversed[i];
            long input = reversed[Math.Min(i + 1, n - 1)];
            int layers = c.LayersPerBlock[r] + 1;
            for (int j = 0; j < layers; j++)
            {
                long skip = j == layers - 1 ? input : output;
                total += ResnetParameters((j == 0 ? prev : output) + skip, output, t);
                if (c.UpBlockTypes[i] == "CrossAttnUpBlock2D")
                    total += Transformer2DParameters(output, c.TransformerLayersPerBlock[r], c.CrossAttentionDim[r], c.OnlyCrossAttention[r]);
            }
            if (i < n - 1) total += ConvParameters(output, output, 3);
        }
        return total + 2 * ch[0] + ConvParameters(ch[0], c.OutChannels, c.ConvOutKernel);
    }

    [Fact]
    public void Forward_gives_the_noise_prediction_diffusers_computed_for_the_fixture_text_states()
    {
        using var model = UNet2DConditionModel.Load(UNetFolder);
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var output = model.Forward(io.ReadFloat("sample"), new Conditioning(io.Read("timestep"), EncoderHiddenStates: io.ReadFloat("encoder_hidden_states")));
        var reference = io.ReadFloat("output");
        Assert.Equal(reference.shape, output.shape);
        Assert.Equal(792964, model.ParameterCount()); // case.json's num_parameters
        double error = Fixtures.RelativeError(output, reference);
        Assert.True(error <= 1e-4, $"error {error}");
    }

    [Fact]
    public void The_parameter_count_worked_out_from_diffusers_construction_matches_the_fixture_and_other_configs()
    {
        // The hand-written count must reproduce the number diffusers reported for the fixture before it checks anything else.
        var fixture = ConfigWith();
        Assert.Equal(792964, ExpectedParameters(fixture));

        var configs = new[]
        {
            fixture,
            // per-block lists: cross-attention widths, depths, ResNets per block, only_cross_attention (attn1 reads the text)
            ConfigWith(("down_block_types", """["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]"""), ("up_block_types", """["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]"""),
                ("cross_attention_dim", "[16, 24]"), ("transformer_layers_per_block", "[1, 2]"), ("layers_per_block", "[1, 2]"),
                ("only_cross_attention", "[true, false]"), ("attention_head_dim", "[2, 4]")),
            // no mid block; conv kernels other than 3; time_embedding_dim overriding 4 x block_out_channels[0]
            ConfigWith(("mid_block_type", "null"), ("conv_in_kernel", "5"), ("conv_out_kernel", "1"), ("time_embedding_dim", "48")),
        };
        foreach (var config in configs)
        {
            using var model = new UNet2DConditionModel(config);
            Assert.Equal(ExpectedParameters(config), model.ParameterCount());
        }

        using var lists = new UNet2DConditionModel(configs[1]);
        var shapes = Shapes(lists);
        Assert.Equal(new long[] { 32, 16 }, shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"]); // only_cross_attention
        Assert.Equal(new long[] { 64, 64 }, shapes["down_blocks.1.attentions.1.transformer_blocks.1.attn1.to_k.weight"]);
        Assert.Equal(new long[] { 64, 24 }, shapes["down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_v.weight"]);
        Assert.Equal(new long[] { 64, 24 }, shapes["mid_block.attentions.0.transformer_blocks.1.attn2.to_k.weight"]); // the last block's depth and width
        Assert.Equal(new long[] { 64, 24 }, shapes["up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_k.weight"]); // up blocks reversed
        Assert.Equal(new long[] { 32, 16 }, shapes["up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k.weight"]);
        Assert.DoesNotContain("up_blocks.1.attentions.2.norm.weight", shapes.Keys); // layers_per_block 1 + 1 there
        Assert.DoesNotContain(shapes.Keys, k => k.Contains("to_q.bias") || k.Contains("to_k.bias") || k.Contains("to_v.bias"));
        Assert.Equal(new long[] { 512, 64 }, shapes["down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"]);
        Assert.Equal(new long[] { 64, 256 }, shapes["down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight"]);
    }

    [Fact]
    public void Linear_projection_stores_proj_in_and_proj_out_as_linear_weights_and_computes_the_same_function()
    {
        using var conv = UNet2DConditionModel.Load(UNetFolder);
        using var linear = new UNet2DConditionModel(ConfigWith(("use_linear_projection", "true")));
        var convShapes = Shapes(conv);
        var linearShapes = Shapes(linear);
        Assert.Equal(convShapes.Keys.Order(), linearShapes.Keys.Order());
        Assert.Equal(conv.ParameterCount(), linear.ParameterCount());
        Assert.Equal(new long[] { 32, 32, 1, 1 }, convShapes["down_blocks.0.attentions.0.proj_in.weight"]);
        Assert.Equal(new long[] { 32, 32 }, linearShapes["down_blocks.0.attentions.0.proj_in.weight"]);
        Assert.Equal(new long[] { 64, 64 }, linearShapes["mid_block.attentions.0.proj_out.weight"]);
        var differing = linearShapes.Where(kv => !kv.Value.SequenceEqual(convShapes[kv.Key])).Select(kv => kv.Key).ToList();
        Assert.All(differing, k => Assert.Matches(@"\.attentions\.\d+\.proj_(in|out)\.weight$", k));
        Assert.Equal(8, differing.Count); // proj_in and proj_out of down 0, mid, up 1 (two layers)

        // A 1x1 convolution is a linear map on each pixel: with the same weights reshaped, both forms compute the same output.
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var weights = conv.state_dict().ToDictionary(kv => kv.Key,
            kv => differing.Contains(kv.Key) ? kv.Value.reshape(linearShapes[kv.Key]) : kv.Value, StringComparer.Ordinal);
        DiffusersModelLoader.LoadStrict(linear, weights, "reshaped fixture weights");
        var conditioning = new Conditioning(io.Read("timestep"), EncoderHiddenStates: io.ReadFloat("encoder_hidden_states"));
        var sample = io.ReadFloat("sample");
        double error = Fixtures.RelativeError(linear.Forward(sample, conditioning), io.ReadFloat("output"));
        Assert.True(error <= 1e-4, $"error {error}");
    }

    [Fact]
    public void Attention_head_dim_counts_heads_per_block_reversed_for_up_blocks_as_in_diffusers()
    {
        // diffusers reads attention_head_dim as the number of heads (num_attention_heads = attention_head_dim): the 32-channel
        // blocks get 2 heads of 16, the 64-channel ones 8 heads of 8.
        var config = ConfigWith(("attention_head_dim", "[2, 8]"));
        Assert.Equal(new[] { 2, 8 }, config.AttentionHeadDim);
        using var model = new UNet2DConditionModel(config);
        var down = ((Transformer2DModel)((CrossAttnDownBlock2D)model.DownBlocks[0]).Attentions[0]).TransformerBlocks[0];
        var mid = ((Transformer2DModel)((UNetMidBlock2DCrossAttn)model.MidBlock!).Attentions[0]).TransformerBlocks[0];
        var up = ((Transformer2DModel)((CrossAttnUpBlock2D)model.UpBlocks[1]).Attentions[1]).TransformerBlocks[0];
        Assert.Equal((2, 16), (down.Attn1.Heads, down.Attn1.DimHead));
        Assert.Equal((2, 16), (down.Attn2.Heads, down.Attn2.DimHead));
        Assert.Equal((8, 8), (mid.Attn1.Heads, mid.Attn1.DimHead));
        Assert.Equal((2, 16), (up.Attn2.Heads, up.Attn2.DimHead));

        // The head split changes the function (same weights, fixture's 8 heads vs these), so the count is really used.
        using var fixture = UNet2DConditionModel.Load(UNetFolder);
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        DiffusersModelLoader.LoadStrict(model, fixture.state_dict(), "fixture weights");
        var conditioning = new Conditioning(io.Read("timestep"), EncoderHiddenStates: io.ReadFloat("encoder_hidden_states"));
        var sample = io.ReadFloat("sample");
        Assert.True(Fixtures.RelativeError(model.Forward(sample, conditioning), io.ReadFloat("output")) > 1e-3);
    }

    [Fact]
    public void The_fixture_config_is_read_with_every_field()
    {
        var config = UNet2DConditionConfig.FromJson(ConfigJson.Load(Path.Combine(UNetFolder, "config.json")));
        Assert.Equal(new[] { 16, 16 }, config.SampleSize);
        Assert.Equal((4, 4), (config.InChannels, config.OutChannels));
        Assert.False(config.CenterInputSample);
        Assert.True(config.FlipSinToCos);
        Assert.Equal(0, config.FreqShift);
        Assert.Equal(new[] { "CrossAttnDownBlock2D", "DownBlock2D" }, config.DownBlockTypes);
        Assert.Equal("UNetMidBlock2DCrossAttn", config.MidBlockType);
        Assert.Equal(new[] { "UpBlock2D", "CrossAttnUpBlock2D" }, config.UpBlockTypes);
        Assert.Equal(new[] { false, false }, config.OnlyCrossAttention);
        Assert.Equal(new[] { 32, 64 }, config.BlockOutChannels);
        Assert.Equal(new[] { 1, 1 }, config.LayersPerBlock);
        Assert.Equal(1, config.DownsamplePadding);
        Assert.Equal(1, config.MidBlockScaleFactor);
        Assert.Equal(0, config.Dropout);
        Assert.Equal("silu", config.ActFn);
        Assert.Equal(8, config.NormNumGroups);
        Assert.Equal(1e-5, config.NormEps);
        Assert.Equal(new[] { 32, 32 }, config.CrossAttentionDim);
        Assert.Equal(new[] { 1, 1 }, config.TransformerLayersPerBlock);
        Assert.Equal(new[] { 8, 8 }, config.AttentionHeadDim);
        Assert.False(config.DualCrossAttention);
        Assert.False(config.UseLinearProjection);
        Assert.Null(config.ClassEmbedType);
        Assert.Null(config.AdditionEmbedType);
        Assert.Null(config.AdditionTimeEmbedDim);
        Assert.Equal(64, config.AdditionEmbedTypeNumHeads);
        Assert.Null(config.NumClassEmbeds);
        Assert.False(config.UpcastAttention);
        Assert.Equal("default", config.ResnetTimeScaleShift);
        Assert.False(config.ResnetSkipTimeAct);
        Assert.Equal(1.0, config.ResnetOutScaleFactor);
        Assert.Equal("positional", config.TimeEmbeddingType);
        Assert.Null(config.TimeEmbeddingDim);
        Assert.Null(config.TimeEmbeddingActFn);
        Assert.Null(config.TimestepPostAct);
        Assert.Equal((3, 3), (config.ConvInKernel, config.ConvOutKernel));
        Assert.Null(config.ProjectionClassEmbeddingsInputDim);
        Assert.Equal("default", config.AttentionType);
        Assert.False(config.ClassEmbeddingsConcat);
        Assert.Null(config.MidBlockOnlyCrossAttention);
        Assert.Null(config.CrossAttentionNorm);
        Assert.Equal(128, config.TimeEmbedDim);
        Assert.True(config.Structure.IsEmpty);

        // Written back, diffusers' own keys and values come out (the fixture config was written by diffusers).
        var written = config.ToJson();
        foreach (var (key, value) in FixtureConfigJson().Where(kv => kv.Key != "_diffusers_version"))
            Assert.True(JsonNode.DeepEquals(value, written[key]), $"{key}: {value?.ToJsonString()} vs {written[key]?.ToJsonString()}");
    }

    [Fact]
    public void Absent_keys_take_diffusers_defaults_and_lists_round_trip_through_json()
    {
        var defaults = UNet2DConditionConfig.FromJson(ConfigJson.Parse("""{"_class_name": "UNet2DConditionModel"}"""));
        Assert.Equal(new[] { 320, 640, 1280, 1280 }, defaults.BlockOutChannels);
        Assert.Equal(new[] { "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D" }, defaults.DownBlockTypes);
        Assert.Equal(new[] { "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D" }, defaults.UpBlockTypes);
        Assert.Equal(new[] { 1280, 1280, 1280, 1280 }, defaults.CrossAttentionDim);
        Assert.Equal(new[] { 8, 8, 8, 8 }, defaults.AttentionHeadDim);
        Assert.Equal(new[] { 2, 2, 2, 2 }, defaults.LayersPerBlock);
        Assert.Equal(32, defaults.NormNumGroups);
        Assert.Null(defaults.SampleSize);
        Assert.Equal(1280, defaults.TimeEmbedDim);

        var config = ConfigWith(("attention_head_dim", "[2, 4]"), ("cross_attention_dim", "[16, 24]"), ("transformer_layers_per_block", "[1, 3]"),
            ("only_cross_attention", "[false, true]"), ("sample_size", "[16, 24]"), ("use_linear_projection", "true"), ("upcast_attention", "true"),
            ("timestep_post_act", "\"silu\""), ("time_embedding_act_fn", "\"gelu\""));
        var again = UNet2DConditionConfig.FromJson(ConfigJson.Parse(config.ToJson().ToJsonString(), "round trip"));
        Assert.Equal(config.ToJson().ToJsonString(), again.ToJson().ToJsonString());
        Assert.Equal(new[] { 2, 4 }, again.AttentionHeadDim);
        Assert.Equal(new[] { false, true }, again.OnlyCrossAttention);
        Assert.Equal(new[] { 16, 24 }, again.SampleSize);
        Assert.Equal("silu", again.TimestepPostAct);
        Assert.True(again.UpcastAttention);
    }

    [Fact]
    public void Upcast_attention_and_the_time_activations_are_honoured_where_diffusers_uses_them()
    {
        using var fixture = UNet2DConditionModel.Load(UNetFolder);
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var conditioning = new Conditioning(io.Read("timestep"), EncoderHiddenStates: io.ReadFloat("encoder_hidden_states"));
        var sample = io.ReadFloat("sample");
        var reference = fixture.Forward(sample, conditioning);
        Tensor With(params (string, string)[] changes)
        {
            using var model = new UNet2DConditionModel(ConfigWith(changes));
            DiffusersModelLoader.LoadStrict(model, fixture.state_dict(), "fixture weights");
            model.eval();
            return model.Forward(sample, conditioning);
        }
        // upcast_attention only changes half-precision arithmetic: in float32 the output is the same.
        Assert.True(Identical(reference, With(("upcast_attention", "true"))));
        // timestep_post_act (after time_embedding.linear_2) and time_embedding_act_fn (on the summed embedding) both act.
        Assert.True(Fixtures.RelativeError(With(("timestep_post_act", "\"silu\"")), reference) > 1e-4);
        Assert.True(Fixtures.RelativeError(With(("time_embedding_act_fn", "\"silu\"")), reference) > 1e-4);
        // A SiLU after linear_2 feeds every ResNet's time_emb_proj the same as SiLU(SiLU(emb)); the two settings agree.
        Assert.True(Fixtures.RelativeError(With(("timestep_post_act", "\"silu\"")), With(("time_embedding_act_fn", "\"silu\""))) <= 1e-6);
    }

    /// <summary>A small SDXL-shaped U-Net: text-free first block, linear projections, deeper transformers lower down, text_time.</summary>
    private static UNet2DConditionConfig SdxlLikeConfig(params (string, string)[] changes) => ConfigWith([
        ("down_block_types", """["DownBlock2D", "CrossAttnDownBlock2D"]"""), ("up_block_types", """["CrossAttnUpBlock2D", "UpBlock2D"]"""),
        ("cross_attention_dim", "24"), ("transformer_layers_per_block", "[1, 2]"), ("attention_head_dim", "[2, 4]"),
        ("use_linear_projection", "true"), ("addition_embed_type", "\"text_time\""), ("addition_time_embed_dim", "8"),
        // text_embeds of width 16 plus 6 time ids x 8 sinusoidal features each
        ("projection_class_embeddings_input_dim", "64"), .. changes]);

    private static Dictionary<string, Tensor> TextTime(Tensor textEmbeds, Tensor timeIds) => new() { ["text_embeds"] = textEmbeds, ["time_ids"] = timeIds };

    [Fact]
    public void Sdxl_text_time_needs_text_embeds_and_time_ids_and_adds_them_through_add_embedding()
    {
        var config = SdxlLikeConfig();
        manual_seed(3);
        using var model = new UNet2DConditionModel(config);
        model.eval();
        var shapes = Shapes(model);
        Assert.Equal(new long[] { 128, 64 }, shapes["add_embedding.linear_1.weight"]);
        Assert.Equal(new long[] { 128 }, shapes["add_embedding.linear_1.bias"]);
        Assert.Equal(new long[] { 128, 128 }, shapes["add_embedding.linear_2.weight"]);
        Assert.DoesNotContain(shapes.Keys, k => k.StartsWith("add_time_proj") || k.StartsWith("class_embedding")); // sinusoidal: no weights
        Assert.DoesNotContain(shapes.Keys, k => k.StartsWith("down_blocks.0.attentions") || k.StartsWith("up_blocks.1.attentions"));
        Assert.Equal(new long[] { 64, 64 }, shapes["down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight"]);
        Assert.Equal(new long[] { 64, 24 }, shapes["mid_block.attentions.0.transformer_blocks.1.attn2.to_k.weight"]);
        Assert.Equal(ExpectedParameters(config) + (64 * 128 + 128) + (128 * 128 + 128), model.ParameterCount());

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var sample = randn(2, 4, 16, 16);
        var text = randn(2, 5, 24);
        var timestep = tensor(new long[] { 10, 700 });
        var textEmbeds = randn(2, 16);
        var timeIds = tensor(new float[,] { { 16, 16, 0, 0, 16, 16 }, { 32, 24, 4, 2, 16, 16 } });
        Conditioning Conditions(Dictionary<string, Tensor>? added) => new(timestep, EncoderHiddenStates: text, AddedConditions: added);

        var missing = Assert.Throws<ArgumentException>(() => model.Forward(sample, Conditions(null)));
        Assert.Contains("'text_embeds' [batch, width] and 'time_ids' [batch, ids]", missing.Message);
        var onlyText = Assert.Throws<ArgumentException>(() => model.Forward(sample, Conditions(new() { ["text_embeds"] = textEmbeds })));
        Assert.Contains("got text_embeds", onlyText.Message);
        var wrongWidth = Assert.Throws<ArgumentException>(() => model.Forward(sample, Conditions(TextTime(randn(2, 20), timeIds))));
        Assert.Contains("width + ids x 8 = 64", wrongWidth.Message);

        var output = model.Forward(sample, Conditions(TextTime(textEmbeds, timeIds)));
        Assert.Equal(sample.shape, output.shape);
        Assert.True(Fixtures.RelativeError(model.Forward(sample, Conditions(TextTime(textEmbeds, timeIds + 8))), output) > 1e-5, "time_ids change the output");
        Assert.True(Fixtures.RelativeError(model.Forward(sample, Conditions(TextTime(textEmbeds * 2, timeIds))), output) > 1e-5, "text_embeds change the output");

        // add_embedding sees [text_embeds, features of each time id]: the same MLP as a "projection" class embedding fed that vector.
        using var projection = new UNet2DConditionModel(SdxlLikeConfig(("addition_embed_type", "null"), ("class_embed_type", "\"projection\"")));
        projection.eval();
        DiffusersModelLoader.LoadStrict(projection, model.state_dict().ToDictionary(
            kv => kv.Key.StartsWith("add_embedding.") ? "class_embedding." + kv.Key["add_embedding.".Length..] : kv.Key, kv => kv.Value), "renamed");
        var features = TimestepFeatures.Sinusoidal(timeIds.flatten(), 8, flipSinToCos: true, downscaleFreqShift: 0).reshape(2, 48);
        var viaClass = projection.Forward(sample, new Conditioning(timestep, ClassLabels: cat([textEmbeds, features], 1), EncoderHiddenStates: text));
        Assert.True(Fixtures.RelativeError(viaClass, output) <= 1e-6, $"error {Fixtures.RelativeError(viaClass, output)}");
    }

    [Fact]
    public void Added_conditions_are_refused_by_a_model_without_an_addition_embedding()
    {
        using var model = UNet2DConditionModel.Load(UNetFolder);
        using var scope = NewDisposeScope();
        var error = Assert.Throws<ArgumentException>(() => model.Forward(randn(1, 4, 16, 16),
            new Conditioning(tensor(1L), EncoderHiddenStates: randn(1, 7, 32), AddedConditions: TextTime(randn(1, 16), randn(1, 6)))));
        Assert.Contains("takes no added conditions", error.Message);
    }

    [Theory]
    [InlineData("timestep", null, "{\"class_embedding.linear_1.weight\": [128, 32], \"class_embedding.linear_2.weight\": [128, 128]}")]
    [InlineData("projection", null, "{\"class_embedding.linear_1.weight\": [128, 10], \"class_embedding.linear_2.weight\": [128, 128]}")]
    [InlineData("identity", null, "{}")]
    [InlineData(null, 5, "{\"class_embedding.weight\": [5, 128]}")]
    public void Class_embeddings_have_diffusers_names_and_need_class_labels(string? type, int? numClassEmbeds, string expectedShapes)
    {
        var config = ConfigWith(("class_embed_type", type is null ? "null" : $"\"{type}\""), ("num_class_embeds", numClassEmbeds?.ToString() ?? "null"),
            ("projection_class_embeddings_input_dim", "10"));
        using var model = new UNet2DConditionModel(config);
        model.eval();
        var shapes = Shapes(model).Where(kv => kv.Key.StartsWith("class_embedding.") && kv.Key.EndsWith(".weight")).ToDictionary();
        var expected = JsonNode.Parse(expectedShapes)!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.AsArray().Select(x => (long)x!).ToArray());
        Assert.Equal(expected.Keys.Order(), shapes.Keys.Order());
        foreach (var (key, shape) in expected) Assert.Equal(shape, shapes[key]);

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var sample = randn(2, 4, 16, 16);
        var conditioning = new Conditioning(tensor(new long[] { 3, 400 }), EncoderHiddenStates: randn(2, 7, 32));
        var error = Assert.Throws<ArgumentException>(() => model.Forward(sample, conditioning));
        Assert.Contains("class_labels are required", error.Message);
        var labels = type switch
        {
            "timestep" => tensor(new long[] { 1, 900 }),
            "projection" => randn(2, 10),
            "identity" => randn(2, 128),
            _ => tensor(new long[] { 0, 4 }),
        };
        var output = model.Forward(sample, conditioning with { ClassLabels = labels });
        Assert.Equal(sample.shape, output.shape);
    }

    [Fact]
    public void Concatenated_class_embeddings_double_the_time_embedding_the_resnets_project()
    {
        using var model = new UNet2DConditionModel(ConfigWith(("class_embed_type", "\"timestep\""), ("class_embeddings_concat", "true")));
        var shapes = Shapes(model);
        Assert.Equal(new long[] { 32, 256 }, shapes["down_blocks.0.resnets.0.time_emb_proj.weight"]);
        Assert.Equal(new long[] { 64, 256 }, shapes["mid_block.resnets.1.time_emb_proj.weight"]);
        Assert.Equal(new long[] { 128, 32 }, shapes["time_embedding.linear_1.weight"]);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var output = model.Forward(randn(1, 4, 16, 16), new Conditioning(tensor(5L), tensor(new long[] { 7 }), EncoderHiddenStates: randn(1, 3, 32)));
        Assert.Equal(new long[] { 1, 4, 16, 16 }, output.shape);
    }

    [Fact]
    public void A_resnet_only_or_absent_mid_block_has_diffusers_names()
    {
        using var resnetOnly = new UNet2DConditionModel(ConfigWith(("mid_block_type", "\"UNetMidBlock2D\"")));
        var keys = Shapes(resnetOnly).Keys.Where(k => k.StartsWith("mid_block.")).ToList();
        Assert.Contains("mid_block.resnets.0.conv1.weight", keys);
        Assert.DoesNotContain(keys, k => k.StartsWith("mid_block.resnets.1.") || k.StartsWith("mid_block.attentions."));
        using var none = new UNet2DConditionModel(ConfigWith(("mid_block_type", "null")));
        Assert.DoesNotContain(Shapes(none).Keys, k => k.StartsWith("mid_block."));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var conditioning = new Conditioning(tensor(5L), EncoderHiddenStates: randn(1, 3, 32));
        Assert.Equal(new long[] { 1, 4, 16, 16 }, resnetOnly.Forward(randn(1, 4, 16, 16), conditioning).shape);
        Assert.Equal(new long[] { 1, 4, 16, 16 }, none.Forward(randn(1, 4, 16, 16), conditioning).shape);
    }

    [Fact]
    public void A_masked_text_token_is_ignored_as_if_it_were_not_there()
    {
        using var model = UNet2DConditionModel.Load(UNetFolder);
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var sample = io.ReadFloat("sample");
        var text = io.ReadFloat("encoder_hidden_states"); // [2, 7, 32]
        var timestep = io.Read("timestep");
        // The first sample attends to its first 4 tokens, the second to all 7.
        var mask = tensor(new float[,] { { 1, 1, 1, 1, 0, 0, 0 }, { 1, 1, 1, 1, 1, 1, 1 } });
        var masked = model.Forward(sample, new Conditioning(timestep, EncoderHiddenStates: text, EncoderAttentionMask: mask));
        var firstFour = model.Forward(sample[..1], new Conditioning(timestep[..1], EncoderHiddenStates: text[..1, ..4]));
        Assert.True(Fixtures.RelativeError(masked[..1], firstFour) <= 1e-5, $"error {Fixtures.RelativeError(masked[..1], firstFour)}");
        Assert.True(Fixtures.RelativeError(masked[1..], io.ReadFloat("output")[1..]) <= 1e-4);
        Assert.True(Fixtures.RelativeError(masked[..1], io.ReadFloat("output")[..1]) > 1e-4, "the mask changed the first sample");
    }

    [Fact]
    public void Inputs_the_model_cannot_use_are_refused_saying_what_it_needs()
    {
        using var model = UNet2DConditionModel.Load(UNetFolder);
        using var scope = NewDisposeScope();
        var sample = randn(2, 4, 16, 16);
        var t = tensor(10L);
        Assert.Contains("needs encoder_hidden_states", Assert.Throws<ArgumentException>(() => model.Forward(sample, new Conditioning(t))).Message);
        Assert.Contains("must be [2, tokens, 32]", Assert.Throws<ArgumentException>(() =>
            model.Forward(sample, new Conditioning(t, EncoderHiddenStates: randn(2, 7, 24)))).Message);
        Assert.Contains("must be multiples of 2", Assert.Throws<ArgumentException>(() =>
            model.Forward(randn(2, 4, 15, 16), new Conditioning(t, EncoderHiddenStates: randn(2, 7, 32)))).Message);
        Assert.Contains("[batch, 4, height, width]", Assert.Throws<ArgumentException>(() =>
            model.Forward(randn(2, 3, 16, 16), new Conditioning(t, EncoderHiddenStates: randn(2, 7, 32)))).Message);
        Assert.Contains("encoder_attention_mask must be [2, 7]", Assert.Throws<ArgumentException>(() =>
            model.Forward(sample, new Conditioning(t, EncoderHiddenStates: randn(2, 7, 32), EncoderAttentionMask: ones(2, 5)))).Message);
        Assert.Contains("has no class embedding", Assert.Throws<ArgumentException>(() =>
            model.Forward(sample, new Conditioning(t, tensor(new long[] { 1, 2 }), EncoderHiddenStates: randn(2, 7, 32)))).Message);
    }

    [Theory]
    [InlineData("down_block_types", """["SimpleCrossAttnDownBlock2D", "DownBlock2D"]""", "down block type 'SimpleCrossAttnDownBlock2D' is not supported")]
    [InlineData("up_block_types", """["UpBlock2D", "AttnUpBlock2D"]""", "up block type 'AttnUpBlock2D' is not supported")]
    [InlineData("up_block_types", """["UpBlock2D"]""", "up_block_types has 1")]
    [InlineData("mid_block_type", "\"UNetMidBlock2DSimpleCrossAttn\"", "mid_block_type 'UNetMidBlock2DSimpleCrossAttn' is not supported")]
    [InlineData("attention_head_dim", "[8]", "attention_head_dim has 1 entries but down_block_types has 2")]
    [InlineData("attention_head_dim", "5", "does not split into attention_head_dim 5 heads")]
    [InlineData("attention_head_dim", "null", "attention_head_dim null is not supported")]
    [InlineData("num_attention_heads", "8", "num_attention_heads must be null")]
    [InlineData("cross_attention_dim", "[32, 32, 32]", "cross_attention_dim has 3 entries")]
    [InlineData("cross_attention_dim", "null", "cross_attention_dim null is not supported")]
    [InlineData("transformer_layers_per_block", "[[1], [2]]", "transformer_layers_per_block holds nested lists")]
    [InlineData("transformer_layers_per_block", "0", "transformer_layers_per_block entries must be at least 1")]
    [InlineData("reverse_transformer_layers_per_block", "[[1, 1], [1, 1]]", "reverse_transformer_layers_per_block must be null")]
    [InlineData("only_cross_attention", "[true]", "only_cross_attention has 1 entries")]
    [InlineData("only_cross_attention", "\"yes\"", "'only_cross_attention' has the wrong type")]
    [InlineData("layers_per_block", "[1, 0]", "layers_per_block entries must be at least 1")]
    [InlineData("time_embedding_type", "\"fourier\"", "time_embedding_type 'fourier' is not supported")]
    [InlineData("time_cond_proj_dim", "32", "time_cond_proj_dim must be null")]
    [InlineData("class_embed_type", "\"simple_projection\"", "class_embed_type 'simple_projection' is not supported")]
    [InlineData("class_embed_type", "\"projection\"", "needs projection_class_embeddings_input_dim")]
    [InlineData("class_embeddings_concat", "true", "class_embeddings_concat is set but the model has no class embedding")]
    [InlineData("addition_embed_type", "\"text\"", "addition_embed_type 'text' is not supported")]
    [InlineData("addition_embed_type", "\"text_time\"", "needs addition_time_embed_dim")]
    [InlineData("encoder_hid_dim", "64", "encoder_hid_dim must be null")]
    [InlineData("encoder_hid_dim_type", "\"text_proj\"", "encoder_hid_dim_type must be null")]
    [InlineData("dual_cross_attention", "true", "dual_cross_attention (DualTransformer2DModel) is not supported")]
    [InlineData("attention_type", "\"gated\"", "attention_type 'gated' is not supported")]
    [InlineData("act_fn", "\"tanh\"", "activation 'tanh' is not supported")]
    [InlineData("timestep_post_act", "\"softplus\"", "activation 'softplus' is not supported")]
    [InlineData("time_embedding_act_fn", "\"tanh\"", "activation 'tanh' is not supported")]
    [InlineData("resnet_time_scale_shift", "\"ada_group\"", "resnet_time_scale_shift 'ada_group' is not supported")]
    [InlineData("norm_num_groups", "null", "norm_num_groups null is not supported")]
    [InlineData("norm_num_groups", "12", "not a multiple of norm_num_groups 12")]
    [InlineData("conv_in_kernel", "4", "conv_in_kernel must be an odd positive number")]
    [InlineData("downsample_padding", "2", "downsample_padding must be 0 or 1")]
    [InlineData("sample_size", "[16, 16, 3]", "sample_size must be one or two positive numbers")]
    [InlineData("in_channels", "0", "in_channels must be at least 1")]
    [InlineData("_class_name", "\"UNet2DModel\"", "describes a 'UNet2DModel', not a UNet2DConditionModel")]
    public void Unsupported_or_inconsistent_config_values_are_refused_with_what_was_wrong(string key, string json, string message)
    {
        var root = FixtureConfigJson();
        root[key] = JsonNode.Parse(json);
        var error = Assert.Throws<ModelFormatException>(() => UNet2DConditionConfig.FromJson(new ConfigJson(root, "unet/config.json")));
        Assert.Contains(message, error.Message);
        Assert.Contains("unet/config.json", error.Message);
    }

    /// <summary>Writes the fixture config and the fixture weights, changed by <paramref name="change"/>, as a unet folder.</summary>
    private static void WriteUNetFolder(TempFolder temp, Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>> change, string weightsFile = ModelFolder.Weights)
    {
        using var scope = NewDisposeScope();
        File.Copy(Path.Combine(UNetFolder, ModelFolder.Config), temp.File(ModelFolder.Config), overwrite: true);
        var weights = DiffusersModelLoader.ReadSafetensors(Path.Combine(UNetFolder, ModelFolder.Weights));
        SafetensorsWriter.Write(temp.File(weightsFile), change(weights));
    }

    [Fact]
    public void Weights_missing_a_tensor_or_with_a_mis_shaped_one_are_refused_naming_it()
    {
        using var temp = Fixtures.Temp();
        WriteUNetFolder(temp, weights =>
        {
            weights.Remove("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight");
            return weights;
        });
        var error = Assert.Throws<ModelFormatException>(() => UNet2DConditionModel.Load(temp.Path));
        Assert.Contains("missing keys: mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", error.Message);

        WriteUNetFolder(temp, weights =>
        {
            weights["down_blocks.0.attentions.0.proj_in.weight"] = zeros(32, 32); // a linear-projection checkpoint under a conv config
            return weights;
        });
        error = Assert.Throws<ModelFormatException>(() => UNet2DConditionModel.Load(temp.Path));
        Assert.Contains("tensor 'down_blocks.0.attentions.0.proj_in.weight' has shape [32, 32]", error.Message);
    }

    [Fact]
    public void A_half_precision_weight_file_loads_upcast_to_float32()
    {
        using var temp = Fixtures.Temp();
        string halfFile = ModelFolder.WeightsStem + ".fp16.safetensors";
        WriteUNetFolder(temp, weights => weights.ToDictionary(kv => kv.Key, kv => kv.Value.to_type(ScalarType.Float16), StringComparer.Ordinal), halfFile);
        Assert.False(File.Exists(temp.File(ModelFolder.Weights)));

        using var model = UNet2DConditionModel.Load(temp.Path);
        using var half = SafetensorsFile.Open(temp.File(halfFile));
        using var scope = NewDisposeScope();
        var state = model.state_dict();
        Assert.Equal(half.Entries.Count, state.Count);
        foreach (var (key, value) in state)
        {
            Assert.Equal(SafetensorsDType.F16, half.Entries[key].DType);
            Assert.Equal(ScalarType.Float32, value.dtype);
            Assert.True(Identical(value, half.Read(key).to_type(ScalarType.Float32)), key);
        }
    }

    [Fact]
    public void A_pipeline_folder_loads_its_unet_subfolder()
    {
        using var model = UNet2DConditionModel.Load(Fixtures.Diffusers("sd-pipeline-small", "pipeline"));
        var expected = UNet2DConditionConfig.FromJson(ConfigJson.Load(Fixtures.Diffusers("sd-pipeline-small", "pipeline", "unet", "config.json")));
        Assert.Equal(expected.ToJson().ToJsonString(), model.Config.ToJson().ToJsonString());
        Assert.Equal(ExpectedParameters(model.Config), model.ParameterCount());
    }
}
