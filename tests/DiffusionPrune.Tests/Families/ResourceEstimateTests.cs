using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using Xunit;

namespace DiffusionPrune.Tests.Families;

/// <summary>
/// The resource estimate walks each family's architecture from the config alone; its parameters and MACs must equal
/// those of the model actually built (MACs as <see cref="ModelCost"/> counts them in a real forward), for every
/// variant the families build, pruned structures included.
/// </summary>
public class ResourceEstimateTests
{
    private const string UNetBase = """
        "_class_name": "UNet2DModel", "sample_size": 16, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
        "block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 4
        """;

    public static TheoryData<string> UNetConfigs() => new()
    {
        // default block types: DownBlock2D + AttnDownBlock2D (via the two-entry lists)
        "{" + UNetBase + ", \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\"], \"up_block_types\": [\"AttnUpBlock2D\", \"UpBlock2D\"]}",
        // attention everywhere, resnet resampling, scale-shift time conditioning, fourier time, odd size, class labels
        "{" + UNetBase.Replace("\"sample_size\": 16", "\"sample_size\": 12") + ", \"down_block_types\": [\"AttnDownBlock2D\", \"AttnDownBlock2D\"], \"up_block_types\": [\"AttnUpBlock2D\", \"AttnUpBlock2D\"], \"downsample_type\": \"resnet\", \"upsample_type\": \"resnet\", \"resnet_time_scale_shift\": \"scale_shift\", \"time_embedding_type\": \"fourier\", \"num_class_embeds\": 10}",
        // three levels, padding 0, learned time, class embed timestep, no mid attention, non-square sample
        "{" + UNetBase.Replace("\"sample_size\": 16", "\"sample_size\": [16, 8]").Replace("[8, 16]", "[8, 16, 24]").Replace("\"attention_head_dim\": 4", "\"attention_head_dim\": null") + ", \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\", \"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"AttnUpBlock2D\", \"UpBlock2D\"], \"downsample_padding\": 0, \"time_embedding_type\": \"learned\", \"num_train_timesteps\": 100, \"class_embed_type\": \"timestep\", \"add_attention\": false}",
        // no mid block, identity class embedding, two layers per block
        "{" + UNetBase.Replace("\"layers_per_block\": 1", "\"layers_per_block\": 2") + ", \"down_block_types\": [\"AttnDownBlock2D\", \"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"AttnUpBlock2D\"], \"mid_block_type\": null, \"class_embed_type\": \"identity\"}",
        // a pruned structure: narrowed ResNets and heads, removed layers
        "{" + UNetBase + ", \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\"], \"up_block_types\": [\"AttnUpBlock2D\", \"UpBlock2D\"], \"dprune_structure\": {\"resnet_inner_channels\": {\"down_blocks.0.resnets.0\": 4, \"up_blocks.1.resnets.1\": 4}, \"attention_heads\": {\"down_blocks.1.attentions.0\": 2}, \"feed_forward_inner\": {}, \"removed_layers\": [\"mid_block.resnets.1\", \"mid_block.attentions.0\", \"up_blocks.0.attentions.1\"]}}",
    };

    private const string DiTBase = """
        "_class_name": "DiTTransformer2DModel", "sample_size": 8, "patch_size": 2, "in_channels": 4, "num_layers": 3,
        "num_attention_heads": 2, "attention_head_dim": 8, "num_embeds_ada_norm": 10, "norm_type": "ada_norm_zero"
        """;

    public static TheoryData<string> DiTConfigs() => new()
    {
        "{" + DiTBase + "}",
        "{" + DiTBase + ", \"out_channels\": 8, \"norm_elementwise_affine\": true, \"attention_bias\": false, \"activation_fn\": \"gelu\"}",
        "{" + DiTBase + ", \"dprune_structure\": {\"attention_heads\": {\"transformer_blocks.1.attn1\": 1}, \"feed_forward_inner\": {\"transformer_blocks.2.ff\": 20}, \"removed_layers\": [\"transformer_blocks.0\"]}}",
        "{" + DiTBase + ", \"dprune_structure\": {\"removed_layers\": [\"transformer_blocks.1\", \"transformer_blocks.2\"]}}",
    };

    [Theory]
    [MemberData(nameof(UNetConfigs))]
    [MemberData(nameof(DiTConfigs))]
    public void Parameters_and_MACs_equal_the_built_models(string json)
    {
        var config = ConfigJson.Parse(json);
        var estimate = ModelFamilies.Estimate(config);
        using var model = ModelFamilies.Create(config);
        var cost = ModelCost.Measure(model);
        Assert.Equal(model.ParameterCount(), estimate.Parameters);
        Assert.Equal(cost.Macs, estimate.Macs);
        Assert.Equal(model.SampleSize, estimate.SampleSize);
        Assert.True(estimate.ForwardActivationBytesPerSample > 0 && estimate.ForwardActivationBytesPerSample < estimate.TrainingActivationBytesPerSample);
    }

    [Theory]
    [InlineData("unet2d-small/model")]
    [InlineData("dit-small/model")]
    public void Held_out_diffusers_configs_are_estimated_exactly(string fixture)
    {
        string folder = Fixtures.Diffusers(fixture);
        var estimate = ModelFamilies.EstimateFolder(folder);
        using var model = ModelFamilies.Load(folder);
        Assert.Equal(model.ParameterCount(), estimate.Parameters);
        Assert.Equal(ModelCost.Measure(model).Macs, estimate.Macs);
    }

    [Fact]
    public void A_config_whose_widths_need_36_GB_is_refused_before_anything_is_allocated()
    {
        // block_out_channels 3 x 32,768 wide: ~36 GB of float32 weights in the mid block alone.
        var config = ConfigJson.Parse("{" + UNetBase.Replace("[8, 16]", "[32768, 32768]").Replace("\"norm_num_groups\": 4", "\"norm_num_groups\": 32") +
            ", \"down_block_types\": [\"DownBlock2D\", \"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"]}", "huge/config.json");
        var estimate = ModelFamilies.Estimate(config);
        Assert.True(estimate.ParameterBytes > 30L << 30, $"{estimate.ParameterBytes}");
        var refusal = Assert.Throws<ResourceLimitException>(() => ModelFamilies.Create(config));
        Assert.Contains("huge/config.json", refusal.Message);
        Assert.Contains("GiB", refusal.Message);
        Assert.Contains("nothing was allocated", refusal.Message);
        Assert.DoesNotContain('\n', refusal.Message);
        Assert.True(UserErrors.Is(refusal));
    }

    [Fact]
    public void Widths_whose_products_overflow_are_refused_as_a_resource_error()
    {
        var config = ConfigJson.Parse("{" + DiTBase.Replace("\"attention_head_dim\": 8", "\"attention_head_dim\": 2000000000").Replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 2000000000") + "}");
        var refusal = Assert.ThrowsAny<Exception>(() => ModelFamilies.Create(config));
        Assert.True(UserErrors.Is(refusal), refusal.ToString());
    }

    [Fact]
    public void The_limit_comes_from_the_override_then_the_environment_then_the_machine()
    {
        Assert.Equal(512L << 20, MemoryLimit.Parse("512M"));
        Assert.Equal(8L << 30, MemoryLimit.Parse("8GB"));
        Assert.Equal((long)(1.5 * (1L << 30)), MemoryLimit.Parse("1.5GiB"));
        Assert.Equal(1000, MemoryLimit.Parse("1000"));
        Assert.Equal(2L << 30, MemoryLimit.Parse("2Gi")); // as Kubernetes writes it
        Assert.Equal(300L << 20, MemoryLimit.Parse("300Mi"));
        foreach (var bad in new[] { "", "lots", "-1G", "0", "12Q", "1e400", "0.5", "0.0001K" }) // nothing that truncates to 0 bytes
            Assert.Throws<ArgumentException>(() => MemoryLimit.Parse(bad));
        Assert.True(MemoryLimit.Available() > 0);
    }

    [Fact]
    public void A_layer_keeps_only_its_output_alive_after_it_returns()
    {
        var t = new CostTally();
        t.Tensor(10);
        t.Layer(4, () => { t.Tensor(100); t.Tensor(4); });
        t.Tensor(1);
        Assert.Equal(115, t.SavedElements); // all of them, for training
        Assert.Equal(114, t.PeakLiveElements); // 10 + 100 + 4 inside the layer
        t.Tensor(200);
        Assert.Equal(10 + 4 + 1 + 200, t.PeakLiveElements);
    }

    [Fact]
    public void Inference_of_a_text_U_Net_holds_far_less_than_every_intermediate_and_training_still_counts_them_all()
    {
        // Stable Diffusion 1.5's U-Net shapes (benchmarks/configs/sd15-unet.json): measured peak of a guided step at 64 x 64,
        // 4.41 GiB with weights of 3.20 GiB (docs/BENCHMARKS.md); the old every-intermediate count said 8.90 GiB.
        var estimate = ModelFamilies.Estimate(ConfigJson.Load(Path.Combine(Fixtures.RepoRoot, "benchmarks", "configs", "sd15-unet.json")));
        Assert.Equal(859_520_964, estimate.Parameters);
        double gib = estimate.Inference(2).TotalBytes / (double)(1L << 30);
        Assert.InRange(gib, 3.9, 5.0);
        Assert.True(estimate.TrainingActivationBytesPerSample > 4 * estimate.ForwardActivationBytesPerSample);
    }

    [Fact]
    public void Workloads_add_what_they_keep()
    {
        var estimate = ModelFamilies.Estimate(ConfigJson.Parse("{" + DiTBase + "}"));
        var inference = estimate.Inference(4);
        var training = estimate.Training(4);
        Assert.Equal(estimate.ParameterBytes, inference.WeightBytes);
        Assert.Equal(4 * estimate.ForwardActivationBytesPerSample, inference.ActivationBytes);
        Assert.Equal(5 * estimate.ParameterBytes, training.WeightBytes);
        Assert.Equal(4 * estimate.TrainingActivationBytesPerSample, training.ActivationBytes);
        Assert.True(estimate.MaskLearning(4, 50).ActivationBytes > estimate.MaskLearning(4, 10).ActivationBytes);
        Assert.True(estimate.Distillation(estimate, 4).TotalBytes > training.TotalBytes);
        // without time-step checkpointing every step's activations are kept
        Assert.Equal(10 * estimate.MaskLearning(4, 10).ActivationBytes - 9 * (4 * 2L * 11 * estimate.SampleBytes),
            estimate.MaskLearning(4, 10, checkpointing: false).ActivationBytes);
    }

    [Fact]
    public void Byte_counts_saturate_instead_of_wrapping_to_a_negative_that_would_fit()
    {
        // 2^61 parameters: x4 bytes, x5 for training and the sums all overflow a long
        var huge = new ResourceEstimate("UNet2DModel", [8, 8], 1L << 61, 1, 1L << 62, long.MaxValue, 1L << 40);
        Assert.Equal(long.MaxValue, huge.ParameterBytes);
        foreach (var need in new[] { huge.Inference(1_000_000), huge.Training(64), huge.Gradients(64), huge.MaskLearning(64, 1000, checkpointing: false), huge.Distillation(huge, 64) })
        {
            Assert.Equal(long.MaxValue, need.TotalBytes);
            Assert.Throws<ResourceLimitException>(() => need.EnsureFits("huge")); // above any machine's limit
        }
        Assert.Throws<ResourceLimitException>(() => new ResourceEstimate("UNet2DModel", [8, 8], -5, 1, 1, 1, 1).Training(1));
    }
}
