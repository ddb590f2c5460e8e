using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Models;

/// <summary>
/// Configurations the diffusers fixtures don't cover. Expected state-dict keys and shapes are written out
/// from diffusers' source (unet_2d.py, unet_2d_blocks.py, resnet.py, attention_processor.py,
/// dit_transformer_2d.py, attention.py, normalization.py, embeddings.py at commit 58eb52c0803e), and
/// behaviour is pinned down against independent re-implementations of diffusers' formulas.
/// </summary>
public class ConfigurationTests
{
    // A small UNet touching every optional branch: attention and plain blocks, resnet resampling,
    // scale_shift time conditioning and class embeddings. Channels 8/8/16, temb 32, 4 groups, head dim 4.
    private static UNet2DConfig SmallUNet => new()
    {
        SampleSize = [8, 8],
        InChannels = 2,
        OutChannels = 2,
        DownBlockTypes = ["AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        UpBlockTypes = ["AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"],
        BlockOutChannels = [8, 8, 16],
        LayersPerBlock = 1,
        NormNumGroups = 4,
        AttentionHeadDim = 4,
        DownsampleType = "resnet",
        UpsampleType = "resnet",
        ResnetTimeScaleShift = "scale_shift",
        NumClassEmbeds = 3,
    };

    // ---- (a) state-dict keys and shapes ----

    [Fact]
    public void Resnet_resampling_scale_shift_and_class_embeds_give_diffusers_keys_and_shapes()
    {
        using var model = Build(SmallUNet);
        AssertStateDict(ExpectedSmallUNet(scaleShift: true, midAttention: true, midAttentionGroupNorm: false), model);
        // scale_shift without attn_norm_num_groups: the mid-block attention has no GroupNorm at all.
        Assert.Null(((Attention)model.MidBlock!.Attentions![0]).NormGroups);
        Assert.Equal(4, ((Attention)model.DownBlocks[0].Attentions![0]).NormGroups);
    }

    [Fact]
    public void Scale_shift_with_attn_norm_num_groups_gives_the_mid_attention_a_group_norm()
    {
        using var model = Build(SmallUNet with { AttnNormNumGroups = 2 });
        AssertStateDict(ExpectedSmallUNet(scaleShift: true, midAttention: true, midAttentionGroupNorm: true), model);
        Assert.Equal(2, ((Attention)model.MidBlock!.Attentions![0]).NormGroups);
        // The down/up attention blocks always use norm_num_groups.
        Assert.Equal(4, ((Attention)model.UpBlocks[0].Attentions![1]).NormGroups);
    }

    [Fact]
    public void Default_time_scale_shift_gives_single_width_time_projection_and_mid_attention_group_norm()
    {
        using var model = Build(SmallUNet with { ResnetTimeScaleShift = "default" });
        AssertStateDict(ExpectedSmallUNet(scaleShift: false, midAttention: true, midAttentionGroupNorm: true), model);
        Assert.Equal(4, ((Attention)model.MidBlock!.Attentions![0]).NormGroups);
    }

    [Fact]
    public void Add_attention_false_has_no_mid_block_attention()
    {
        using var model = Build(SmallUNet with { ResnetTimeScaleShift = "default", AddAttention = false });
        AssertStateDict(ExpectedSmallUNet(scaleShift: false, midAttention: false, midAttentionGroupNorm: false), model);
        Assert.Null(model.MidBlock!.Attentions);
        Assert.Equal(2, model.MidBlock.Resnets.Count);
    }

    [Fact]
    public void Null_mid_block_type_has_no_mid_block_keys()
    {
        using var model = Build(SmallUNet with { MidBlockType = null });
        var expected = ExpectedSmallUNet(scaleShift: true, midAttention: true, midAttentionGroupNorm: false)
            .Where(kv => !kv.Key.StartsWith("mid_block.")).ToDictionary();
        AssertStateDict(expected, model);
    }

    [Fact]
    public void Time_and_class_embedding_variants_give_diffusers_keys()
    {
        var plain = SmallUNet with { NumClassEmbeds = null };
        using (var model = Build(plain))
            Assert.DoesNotContain(model.state_dict().Keys, k => k.StartsWith("class_embedding") || k.StartsWith("time_proj"));

        // fourier: GaussianFourierProjection(block_out_channels[0]) -> time_proj.weight [8]; sin+cos doubles linear_1's input.
        using (var model = Build(plain with { TimeEmbeddingType = "fourier" }))
        {
            var state = model.state_dict();
            Assert.Equal(new long[] { 8 }, state["time_proj.weight"].shape);
            Assert.Equal(new long[] { 32, 16 }, state["time_embedding.linear_1.weight"].shape);
        }
        // learned: nn.Embedding(num_train_timesteps, block_out_channels[0]).
        using (var model = Build(plain with { TimeEmbeddingType = "learned", NumTrainTimesteps = 50 }))
            Assert.Equal(new long[] { 50, 8 }, model.state_dict()["time_proj.weight"].shape);
        // time_embedding_dim replaces 4 * block_out_channels[0] everywhere (time MLP and every time_emb_proj).
        using (var model = Build(plain with { TimeEmbeddingDim = 20 }))
        {
            var state = model.state_dict();
            Assert.Equal(new long[] { 20, 8 }, state["time_embedding.linear_1.weight"].shape);
            Assert.Equal(new long[] { 20, 20 }, state["time_embedding.linear_2.weight"].shape);
            Assert.Equal(new long[] { 16, 20 }, state["down_blocks.0.resnets.0.time_emb_proj.weight"].shape); // scale_shift: 2 x 8 rows
        }
        // class_embed_type timestep: a second TimestepEmbedding fed by the same time projection.
        using (var model = Build(plain with { ClassEmbedType = "timestep" }))
        {
            var state = model.state_dict();
            Assert.Equal(new long[] { 32, 8 }, state["class_embedding.linear_1.weight"].shape);
            Assert.Equal(new long[] { 32, 32 }, state["class_embedding.linear_2.weight"].shape);
            Assert.Equal(4, state.Keys.Count(k => k.StartsWith("class_embedding.")));
        }
        // class_embed_type identity: no weights; num_class_embeds is ignored when a class_embed_type is given.
        using (var model = Build(plain with { ClassEmbedType = "identity", NumClassEmbeds = 5 }))
            Assert.DoesNotContain(model.state_dict().Keys, k => k.StartsWith("class_embedding"));
        // num_class_embeds alone: nn.Embedding(num_class_embeds, time_embed_dim).
        using (var model = Build(plain with { NumClassEmbeds = 7 }))
            Assert.Equal(new long[] { 7, 32 }, model.state_dict()["class_embedding.weight"].shape);
    }

    [Fact]
    public void DiT_with_patch_4_and_no_learned_sigma_gives_diffusers_keys_and_shapes()
    {
        using var model = Build(SmallDiT);
        AssertStateDict(ExpectedSmallDiT(attentionBias: true, elementwiseAffine: false), model);
        Assert.False(model.LearnedSigma);
        Assert.Equal(4, model.OutChannels);
    }

    [Fact]
    public void DiT_without_attention_bias_and_with_affine_norm_gives_diffusers_keys()
    {
        using var model = Build(SmallDiT with { AttentionBias = false, NormElementwiseAffine = true });
        AssertStateDict(ExpectedSmallDiT(attentionBias: false, elementwiseAffine: true), model);
    }

    // ---- (b) parameter counts ----

    [Fact]
    public void Parameter_count_of_a_tiny_unet_equals_the_hand_derived_sum()
    {
        // in 1, out 1, one DownBlock2D/UpBlock2D of 4 channels, 2 groups, no mid attention; temb 16.
        //   conv_in 4*1*9+4 = 40; time_embedding (4*16+16) + (16*16+16) = 352
        //   down resnet 4->4: norms 8+8, conv1 148, time_emb_proj 68, conv2 148 = 380 (final block: no downsampler)
        //   mid: two such resnets = 760
        //   up (2 layers, each 8->4): norm1 16, conv1 292, time_emb_proj 68, norm2 8, conv2 148, conv_shortcut 36 = 568, x2 = 1136
        //   conv_norm_out 8; conv_out 4*1*9+1 = 37                                        total 2713
        var config = new UNet2DConfig
        {
            SampleSize = [8, 8], InChannels = 1, OutChannels = 1, DownBlockTypes = ["DownBlock2D"], UpBlockTypes = ["UpBlock2D"],
            BlockOutChannels = [4], LayersPerBlock = 1, NormNumGroups = 2, AddAttention = false,
        };
        using var model = Build(config);
        Assert.Equal(2713, model.ParameterCount());
    }

    [Fact]
    public void Parameter_count_of_a_tiny_dit_equals_the_hand_derived_sum()
    {
        // inner 16, patch 4, 4 channels, 5 classes, 1 block:
        //   pos_embed.proj 4*4*4*16+16 = 1040
        //   block: timestep_embedder (256*16+16)+(16*16+16) = 4384; class table (5+1)*16 = 96; norm1.linear 16*96+96 = 1632;
        //          attn1 4*(16*16+16) = 1088; ff (16*64+64)+(64*16+16) = 2128                  = 9328
        //   proj_out_1 16*32+32 = 544; proj_out_2 16*64+64 = 1088                              total 12000
        using var model = Build(SmallDiT);
        Assert.Equal(12000, model.ParameterCount());
    }

    // ---- (c) behaviour ----

    [Fact]
    public void Downsample_padding_0_pads_only_right_and_bottom()
    {
        using var scope = NewDisposeScope();
        manual_seed(1);
        using var down = new Downsample2D(2, 2, padding: 0);
        var state = down.state_dict();
        var weight = state["conv.weight"];
        var bias = state["conv.bias"];
        var x = arange(2 * 6 * 6, dtype: ScalarType.Float32).view(1, 2, 6, 6) / 10 - 3;
        using var noGrad = no_grad();
        var output = down.call(x);

        var rightBottom = nn.functional.conv2d(nn.functional.pad(x, [0, 1, 0, 1]), weight, bias, strides: [2, 2]);
        var leftTop = nn.functional.conv2d(nn.functional.pad(x, [1, 0, 1, 0]), weight, bias, strides: [2, 2]);
        Assert.Equal(new long[] { 1, 2, 3, 3 }, output.shape);
        Assert.True(output.allclose(rightBottom, rtol: 0, atol: 1e-5));
        Assert.False(output.allclose(leftTop, rtol: 0, atol: 1e-3));

        // An odd input rounds down like diffusers: 7 -> pad 8 -> 3.
        Assert.Equal(new long[] { 1, 2, 3, 3 }, down.call(randn(1, 2, 7, 7)).shape);
    }

    [Fact]
    public void Downsample_padding_0_changes_the_model_output()
    {
        var config = SmallUNet with { DownsampleType = "conv", UpsampleType = "conv" };
        using var padded = Build(config);
        using var unpadded = Build(config with { DownsamplePadding = 0 });
        CopyWeights(padded, unpadded);
        using var scope = NewDisposeScope();
        var (sample, timestep, labels) = UNetInputs();
        using var noGrad = no_grad();
        Assert.False(padded.Forward(sample, timestep, labels).allclose(unpadded.Forward(sample, timestep, labels), rtol: 0, atol: 1e-4));
    }

    [Fact]
    public void Center_input_sample_equals_feeding_2x_minus_1()
    {
        using var centered = Build(SmallUNet with { CenterInputSample = true });
        using var plain = Build(SmallUNet);
        CopyWeights(centered, plain);
        using var scope = NewDisposeScope();
        var (sample, timestep, labels) = UNetInputs();
        using var noGrad = no_grad();
        var a = centered.Forward(sample, timestep, labels);
        var b = plain.Forward(2 * sample - 1, timestep, labels);
        Assert.True(a.allclose(b, rtol: 0, atol: 1e-6));
        Assert.False(a.allclose(plain.Forward(sample, timestep, labels), rtol: 0, atol: 1e-3));
    }

    [Theory]
    [InlineData(8, false, 1.0)]
    [InlineData(9, false, 1.0)]
    [InlineData(8, true, 0.0)]
    [InlineData(32, true, 1.0)]
    public void Sinusoidal_timestep_features_match_get_timestep_embedding_in_float64(int dim, bool flipSinToCos, double shift)
    {
        using var scope = NewDisposeScope();
        double[] timesteps = [0, 1, 10, 500, 999];
        var actual = TimestepFeatures.Sinusoidal(tensor(timesteps.Select(t => (long)t).ToArray()), dim, flipSinToCos, shift);
        Assert.Equal(new long[] { timesteps.Length, dim }, actual.shape);
        var values = actual.to_type(ScalarType.Float64).data<double>().ToArray();

        int half = dim / 2;
        for (int n = 0; n < timesteps.Length; n++)
        {
            // diffusers get_timestep_embedding: freq_j = exp(-ln(10000) * j / (half - shift)); [sin, cos] (or [cos, sin]); zero pad if odd.
            var expected = new double[dim];
            for (int j = 0; j < half; j++)
            {
                double argument = timesteps[n] * Math.Exp(-Math.Log(10000) * j / (half - shift));
                expected[flipSinToCos ? half + j : j] = Math.Sin(argument);
                expected[flipSinToCos ? j : half + j] = Math.Cos(argument);
            }
            for (int k = 0; k < dim; k++)
                Assert.True(Math.Abs(values[n * dim + k] - expected[k]) < 5e-4, $"t={timesteps[n]} k={k}: {values[n * dim + k]} vs {expected[k]}");
        }
    }

    [Fact]
    public void Fourier_time_features_match_diffusers_formula()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        using var projection = new GaussianFourierProjection(8, scale: 16);
        float[] weight = projection.state_dict()["weight"].data<float>().ToArray();
        float[] timesteps = [3f, 537f, 999f];
        var logT = log(tensor(timesteps)).data<float>().ToArray();
        // diffusers GaussianFourierProjection(log=True, flip_sin_to_cos=False): [sin, cos](log(t) * W * 2 * pi) in float32.
        var phases = new float[timesteps.Length * 8];
        for (int n = 0; n < timesteps.Length; n++)
            for (int j = 0; j < 8; j++)
                phases[n * 8 + j] = logT[n] * weight[j] * 2f * (float)Math.PI;
        var phase = tensor(phases).view(timesteps.Length, 8);
        var expected = cat([sin(phase), cos(phase)], -1);
        var actual = projection.call(tensor(timesteps));
        Assert.True(actual.allclose(expected, rtol: 0, atol: 1e-6), $"max difference {(actual - expected).abs().max().item<float>()}");
    }

    [Theory]
    [InlineData(16, 4, 4, 4)]
    [InlineData(8, 2, 3, 2)]
    [InlineData(12, 6, 6, 4)]
    public void DiT_2d_sincos_table_matches_get_2d_sincos_pos_embed(int dim, int gridH, int gridW, int baseSize)
    {
        using var scope = NewDisposeScope();
        var table = PatchEmbed.SinCos2D(dim, gridH, gridW, baseSize);
        Assert.Equal(ScalarType.Float32, table.dtype);
        Assert.Equal(new long[] { gridH * gridW, dim }, table.shape);
        var values = table.to_type(ScalarType.Float64).data<double>().ToArray();
        for (int r = 0; r < gridH; r++)
            for (int c = 0; c < gridW; c++)
            {
                // Row-major tokens; the first half encodes the column (x), the second half the row (y).
                double x = c / (gridW / (double)baseSize), y = r / (gridH / (double)baseSize);
                var expected = SinCos1D(dim / 2, x).Concat(SinCos1D(dim / 2, y)).ToArray();
                for (int k = 0; k < dim; k++)
                    Assert.True(Math.Abs(values[(r * gridW + c) * dim + k] - expected[k]) < 1e-6, $"row {r} col {c} k {k}");
            }
    }

    [Fact]
    public void DiT_patch_embed_adds_the_table_and_recomputes_it_for_another_resolution()
    {
        using var scope = NewDisposeScope();
        manual_seed(2);
        using var embed = new PatchEmbed(8, 8, 2, 4, 16);
        using var noGrad = no_grad();
        var x = randn(1, 4, 8, 8);
        var added = embed.call(x) - embed.Proj.call(x).flatten(2).transpose(1, 2);
        Assert.True(added[0].allclose(PatchEmbed.SinCos2D(16, 4, 4, baseSize: 4), rtol: 0, atol: 1e-5));

        // diffusers' PatchEmbed.forward: another size gets a fresh table with the same base size (interpolated positions).
        var bigger = randn(1, 4, 12, 12);
        var addedBigger = embed.call(bigger) - embed.Proj.call(bigger).flatten(2).transpose(1, 2);
        Assert.True(addedBigger[0].allclose(PatchEmbed.SinCos2D(16, 6, 6, baseSize: 4), rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void DiT_runs_at_a_resolution_other_than_its_sample_size()
    {
        using var model = Build(SmallDiT with { PatchSize = 2 });
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var output = model.Forward(randn(2, 4, 12, 12), tensor(new long[] { 1, 900 }), tensor(new long[] { 0, 5 }));
        Assert.Equal(new long[] { 2, 4, 12, 12 }, output.shape);
    }

    [Fact]
    public void Mid_block_scale_factor_changes_the_output()
    {
        using var one = Build(SmallUNet);
        using var two = Build(SmallUNet with { MidBlockScaleFactor = 2 });
        CopyWeights(one, two);
        using var scope = NewDisposeScope();
        var (sample, timestep, labels) = UNetInputs();
        using var noGrad = no_grad();
        var a = one.Forward(sample, timestep, labels);
        var b = two.Forward(sample, timestep, labels);
        Assert.False(a.allclose(b, rtol: 0, atol: 1e-3));

        // diffusers divides the output of every mid-block resnet and attention (residual included) by the factor.
        var h = randn(2, 16, 2, 2);
        var temb = randn(2, 32);
        var reference = one.MidBlock!;
        var expected = reference.Resnets[0].call(h, temb) / 2;
        expected = reference.Attentions![0].call(expected) / 2;
        expected = reference.Resnets[1].call(expected, temb) / 2;
        Assert.True(two.MidBlock!.Forward(h, temb).allclose(expected, rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void Resnet_resampling_gives_the_right_spatial_sizes()
    {
        using var model = Build(SmallUNet);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var temb = randn(1, 32);
        var states = new List<Tensor>();
        var down = model.DownBlocks[0].Forward(randn(1, 8, 8, 8), temb, states);
        Assert.Equal(new long[] { 1, 8, 4, 4 }, down.shape);
        Assert.Equal(2, states.Count); // resnet/attention output, then the downsampler's
        Assert.Equal(new long[] { 1, 8, 8, 8 }, states[0].shape);

        var skips = new List<Tensor> { randn(1, 8, 2, 2), randn(1, 16, 2, 2) };
        var up = model.UpBlocks[0].Forward(randn(1, 16, 2, 2), skips, temb);
        Assert.Equal(new long[] { 1, 16, 4, 4 }, up.shape);
        Assert.Empty(skips);

        var (sample, timestep, labels) = UNetInputs();
        Assert.Equal(new long[] { 2, 2, 8, 8 }, model.Forward(sample, timestep, labels).shape);
    }

    [Fact]
    public void Null_attention_head_dim_equals_head_dim_of_the_channel_count()
    {
        var config = SmallUNet with { BlockOutChannels = [8, 8, 8] };
        using var nullHeadDim = Build(config with { AttentionHeadDim = null });
        using var fullWidth = Build(config with { AttentionHeadDim = 8 });
        using var narrow = Build(config with { AttentionHeadDim = 2 });
        CopyWeights(nullHeadDim, fullWidth);
        CopyWeights(nullHeadDim, narrow);
        using var scope = NewDisposeScope();
        var (sample, timestep, labels) = UNetInputs();
        using var noGrad = no_grad();
        var a = nullHeadDim.Forward(sample, timestep, labels);
        Assert.True(a.eq(fullWidth.Forward(sample, timestep, labels)).all().item<bool>());
        Assert.False(a.allclose(narrow.Forward(sample, timestep, labels), rtol: 0, atol: 1e-4)); // 4 heads of 2 attend differently
    }

    // ---- expected state dicts, from diffusers' module definitions ----

    private static DiTConfig SmallDiT => new()
    {
        NumAttentionHeads = 2, AttentionHeadDim = 8, InChannels = 4, OutChannels = null, NumLayers = 1,
        SampleSize = 8, PatchSize = 4, NumEmbedsAdaNorm = 5,
    };

    private static Dictionary<string, long[]> ExpectedSmallDiT(bool attentionBias, bool elementwiseAffine)
    {
        var e = new Expected();
        e.Conv("pos_embed.proj", 16, 4, 4); // the sin-cos table is a non-persistent buffer: not in the state dict
        const string b = "transformer_blocks.0";
        e.Linear($"{b}.norm1.emb.timestep_embedder.linear_1", 16, 256);
        e.Linear($"{b}.norm1.emb.timestep_embedder.linear_2", 16, 16);
        e.Add($"{b}.norm1.emb.class_embedder.embedding_table.weight", 6, 16); // + the null class (class_dropout_prob 0.1)
        e.Linear($"{b}.norm1.linear", 96, 16);
        e.Linear($"{b}.attn1.to_q", 16, 16, attentionBias);
        e.Linear($"{b}.attn1.to_k", 16, 16, attentionBias);
        e.Linear($"{b}.attn1.to_v", 16, 16, attentionBias);
        e.Linear($"{b}.attn1.to_out.0", 16, 16); // out_bias defaults to True
        if (elementwiseAffine) e.Norm($"{b}.norm3", 16);
        e.Linear($"{b}.ff.net.0.proj", 64, 16);
        e.Linear($"{b}.ff.net.2", 16, 64);
        e.Linear("proj_out_1", 32, 16);
        e.Linear("proj_out_2", 4 * 4 * 4, 16); // patch * patch * out_channels (= in_channels: no learned sigma)
        return e.Keys;
    }

    private static Dictionary<string, long[]> ExpectedSmallUNet(bool scaleShift, bool midAttention, bool midAttentionGroupNorm)
    {
        const int temb = 32;
        var e = new Expected();
        e.Conv("conv_in", 8, 2, 3);
        e.Linear("time_embedding.linear_1", temb, 8);
        e.Linear("time_embedding.linear_2", temb, temb);
        e.Add("class_embedding.weight", 3, temb);

        // down_blocks.0: AttnDownBlock2D 8 -> 8, downsample_type resnet -> a ResnetBlock2D(down=True) downsampler
        e.Resnet("down_blocks.0.resnets.0", 8, 8, temb, scaleShift);
        e.Attention("down_blocks.0.attentions.0", 8, 8, groupNorm: true);
        e.Resnet("down_blocks.0.downsamplers.0", 8, 8, temb, scaleShift);
        // down_blocks.1: DownBlock2D ignores downsample_type: Downsample2D conv
        e.Resnet("down_blocks.1.resnets.0", 8, 8, temb, scaleShift);
        e.Conv("down_blocks.1.downsamplers.0.conv", 8, 8, 3);
        // down_blocks.2: final AttnDownBlock2D 8 -> 16, no downsampler
        e.Resnet("down_blocks.2.resnets.0", 8, 16, temb, scaleShift);
        e.Attention("down_blocks.2.attentions.0", 16, 16, groupNorm: true);

        e.Resnet("mid_block.resnets.0", 16, 16, temb, scaleShift);
        if (midAttention) e.Attention("mid_block.attentions.0", 16, 16, groupNorm: midAttentionGroupNorm);
        e.Resnet("mid_block.resnets.1", 16, 16, temb, scaleShift);

        // up_blocks.0: AttnUpBlock2D prev 16, out 16, skip in 8; resnets take 16+16 then 16+8; resnet upsampler
        e.Resnet("up_blocks.0.resnets.0", 32, 16, temb, scaleShift);
        e.Resnet("up_blocks.0.resnets.1", 24, 16, temb, scaleShift);
        e.Attention("up_blocks.0.attentions.0", 16, 16, groupNorm: true);
        e.Attention("up_blocks.0.attentions.1", 16, 16, groupNorm: true);
        e.Resnet("up_blocks.0.upsamplers.0", 16, 16, temb, scaleShift);
        // up_blocks.1: UpBlock2D prev 16, out 8, skip in 8: 16+8 then 8+8; conv upsampler
        e.Resnet("up_blocks.1.resnets.0", 24, 8, temb, scaleShift);
        e.Resnet("up_blocks.1.resnets.1", 16, 8, temb, scaleShift);
        e.Conv("up_blocks.1.upsamplers.0.conv", 8, 8, 3);
        // up_blocks.2: final AttnUpBlock2D prev 8, out 8, skip in 8: 8+8 twice; no upsampler
        e.Resnet("up_blocks.2.resnets.0", 16, 8, temb, scaleShift);
        e.Resnet("up_blocks.2.resnets.1", 16, 8, temb, scaleShift);
        e.Attention("up_blocks.2.attentions.0", 8, 8, groupNorm: true);
        e.Attention("up_blocks.2.attentions.1", 8, 8, groupNorm: true);

        e.Norm("conv_norm_out", 8);
        e.Conv("conv_out", 2, 8, 3);
        return e.Keys;
    }

    /// <summary>diffusers' modules as (key -> shape) entries.</summary>
    private sealed class Expected
    {
        public Dictionary<string, long[]> Keys { get; } = new(StringComparer.Ordinal);
        public void Add(string key, params long[] shape) => Keys.Add(key, shape);
        public void Linear(string p, int outF, int inF, bool bias = true) { Add($"{p}.weight", outF, inF); if (bias) Add($"{p}.bias", outF); }
        public void Conv(string p, int outC, int inC, int k) { Add($"{p}.weight", outC, inC, k, k); Add($"{p}.bias", outC); }
        public void Norm(string p, int c) { Add($"{p}.weight", c); Add($"{p}.bias", c); }

        /// <summary>ResnetBlock2D: norm1, conv1, time_emb_proj (2x rows for scale_shift), norm2, conv2, conv_shortcut when in != out.</summary>
        public void Resnet(string p, int inC, int outC, int temb, bool scaleShift)
        {
            Norm($"{p}.norm1", inC);
            Conv($"{p}.conv1", outC, inC, 3);
            Linear($"{p}.time_emb_proj", scaleShift ? 2 * outC : outC, temb);
            Norm($"{p}.norm2", outC);
            Conv($"{p}.conv2", outC, outC, 3);
            if (inC != outC) Conv($"{p}.conv_shortcut", outC, inC, 1);
        }

        /// <summary>Attention (U-Net self-attention): optional group_norm, to_q/k/v (inner = heads * dim_head), to_out.0.</summary>
        public void Attention(string p, int channels, int inner, bool groupNorm)
        {
            if (groupNorm) Norm($"{p}.group_norm", channels);
            Linear($"{p}.to_q", inner, channels);
            Linear($"{p}.to_k", inner, channels);
            Linear($"{p}.to_v", inner, channels);
            Linear($"{p}.to_out.0", channels, inner);
        }
    }

    // ---- helpers ----

    private static void AssertStateDict(Dictionary<string, long[]> expected, nn.Module model)
    {
        var actual = model.state_dict();
        var missing = expected.Keys.Where(k => !actual.ContainsKey(k)).Order().ToList();
        var extra = actual.Keys.Where(k => !expected.ContainsKey(k)).Order().ToList();
        Assert.True(missing.Count == 0 && extra.Count == 0, $"missing: [{string.Join(", ", missing)}]; unexpected: [{string.Join(", ", extra)}]");
        foreach (var (key, shape) in expected)
            Assert.True(shape.SequenceEqual(actual[key].shape), $"{key}: expected [{string.Join(", ", shape)}], got [{string.Join(", ", actual[key].shape)}]");
    }

    /// <summary>A model with deterministic random weights everywhere (norms included, so no layer is the identity).</summary>
    private static UNet2DModel Build(UNet2DConfig config)
    {
        manual_seed(1234);
        var model = new UNet2DModel(config);
        Randomize(model);
        return model;
    }

    private static DiTTransformer2DModel Build(DiTConfig config)
    {
        manual_seed(1234);
        var model = new DiTTransformer2DModel(config);
        Randomize(model);
        return model;
    }

    private static void Randomize(nn.Module model)
    {
        using var noGrad = no_grad();
        var generator = new Generator(99);
        foreach (var (name, parameter) in model.named_parameters().OrderBy(p => p.name, StringComparer.Ordinal))
        {
            using var noise = randn(parameter.shape, generator: generator);
            if (name.EndsWith("norm1.weight") || name.EndsWith("norm2.weight") || name.EndsWith("norm.weight") || name.EndsWith("conv_norm_out.weight"))
                parameter.copy_(1 + 0.2 * noise);
            else
                parameter.copy_(0.2 * noise);
        }
        model.eval();
    }

    private static void CopyWeights(nn.Module from, nn.Module to)
        => DiffusersModelLoader.LoadStrict(to, from.state_dict(), "copy");

    private static (Tensor sample, Tensor timestep, Tensor labels) UNetInputs()
        => (randn([2, 2, 8, 8], generator: new Generator(17)), tensor(new long[] { 5, 800 }), tensor(new long[] { 0, 2 }));

    private static double[] SinCos1D(int dim, double position)
    {
        // get_1d_sincos_pos_embed_from_grid: omega_k = 1 / 10000^(k / (dim/2)); [sin(p * omega), cos(p * omega)]
        var result = new double[dim];
        for (int k = 0; k < dim / 2; k++)
        {
            double omega = 1.0 / Math.Pow(10000, k / (dim / 2.0));
            result[k] = Math.Sin(position * omega);
            result[dim / 2 + k] = Math.Cos(position * omega);
        }
        return result;
    }
}
