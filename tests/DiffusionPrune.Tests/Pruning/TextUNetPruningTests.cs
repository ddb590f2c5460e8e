using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using DiffusionPrune.Pruning;
using TorchSharp;
using Xunit.Abstractions;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>
/// The Stable Diffusion U-Net (UNet2DConditionModel) as a model family: built from its config, estimated from it, its
/// ResNet channels, self- and cross-attention heads and GEGLU neurons found as unit groups, and a surgically pruned copy
/// that computes what the masked original computes on text-conditioned inputs.
/// </summary>
public class TextUNetPruningTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-5;

    private static string UNetConditionFixture => Fixtures.Diffusers("unet2d-condition-small", "model");

    private const string TinyConfig = """
        {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": [16, 32],
         "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
         "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": [2, 4], "cross_attention_dim": 12, "transformer_layers_per_block": [1, 2],
         "use_linear_projection": true, "only_cross_attention": [true, false]
        """;

    /// <summary>Two latents, two timesteps and two prompts' worth of random text states (77 tokens).</summary>
    private static Conditioning TextInputs(UNet2DConditionModel model, long seed, out Tensor sample)
    {
        var generator = new Generator((ulong)seed);
        sample = randn([2, model.InChannels, model.SampleSize[0], model.SampleSize[1]], generator: generator);
        var states = randn([2, UNet2DConditionFamily.TextTokens, model.Config.CrossAttentionDim[0]], generator: generator);
        return new Conditioning(tensor(new long[] { 17, 613 }), EncoderHiddenStates: states);
    }

    private static Tensor RunText(DiffusionModel model, Tensor sample, Conditioning conditioning)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return model.Forward(sample, conditioning).MoveToOuterDisposeScope();
    }

    [Fact]
    public void The_text_conditioned_unet_family_builds_from_its_config_and_takes_text_states()
    {
        var family = ModelFamilies.ForClass("UNet2DConditionModel");
        Assert.IsType<UNet2DConditionFamily>(family);
        using var model = ModelFamilies.Load(UNetConditionFixture);
        Assert.Same(family, ModelFamilies.Of(model));
        var input = ModelFamilies.ConditioningOf(model);
        Assert.Equal(new ConditioningInput(ConditioningKind.TextStates, 32, 77), input);
        using var scope = NewDisposeScope();
        // The zero conditioning is one the model accepts.
        var prediction = model.Forward(zeros(1, 4, 16, 16), input.Zero(tensor(3L), 1, CPU));
        Assert.Equal(new long[] { 1, 4, 16, 16 }, prediction.shape);
    }

    [Theory]
    [InlineData("as diffusers builds it")]
    [InlineData("pruned")]
    [InlineData("sdxl text_time")]
    public void Parameters_and_MACs_estimated_from_the_config_equal_the_built_models(string which)
    {
        string rest = which switch
        {
            "pruned" => """
                , "dprune_structure": {"attention_heads": {"down_blocks.0.attentions.0.transformer_blocks.0.attn2": 1},
                   "feed_forward_inner": {"up_blocks.0.attentions.1.transformer_blocks.1.ff": 20}, "resnet_inner_channels": {"up_blocks.1.resnets.0": 8},
                   "removed_layers": ["down_blocks.1.attentions.0", "mid_block.resnets.1"]}}
                """,
            "sdxl text_time" => """
                , "resnet_time_scale_shift": "scale_shift", "mid_block_type": "UNetMidBlock2D", "addition_embed_type": "text_time",
                  "addition_time_embed_dim": 4, "projection_class_embeddings_input_dim": 36}
                """,
            _ => "}",
        };
        var config = ConfigJson.Parse(TinyConfig + rest);
        var estimate = ModelFamilies.Estimate(config);
        using var model = ModelFamilies.Create(config);
        Assert.Equal(model.ParameterCount(), estimate.Parameters);
        Assert.Equal(ModelCost.Measure(model).Macs, estimate.Macs);
        Assert.True(estimate.ForwardActivationBytesPerSample > 0);
    }

    [Fact]
    public void The_fixture_unets_estimate_is_exact_and_counts_cross_attention_over_the_text_tokens()
    {
        var estimate = ModelFamilies.EstimateFolder(UNetConditionFixture);
        using var model = ModelFamilies.Load(UNetConditionFixture);
        var cost = ModelCost.Measure(model);
        Assert.Equal(model.ParameterCount(), estimate.Parameters);
        Assert.Equal(cost.Macs, estimate.Macs);
        // attn2 of the 16 x 16 block: 256 queries over 77 text tokens, 8 heads of 4 channels, two matmuls.
        var attn2 = (Attention)model.named_modules().First(m => m.name == "down_blocks.0.attentions.0.transformer_blocks.0.attn2").module;
        Assert.Equal(8, attn2.Heads);
        long expectedCore = 2L * 8 * 256 * 77 * 4;
        long linears = 256L * 32 * 32 + 2 * 77L * 32 * 32 + 256L * 32 * 32;
        var part = cost.Parts.Single(p => p.Name == "down_blocks.0");
        Assert.True(part.Macs > expectedCore + linears, "the cross-attention core is counted in its block");
    }

    [Fact]
    public void Unit_groups_are_resnet_channels_self_and_cross_attention_heads_and_geglu_neurons()
    {
        using var model = ModelFamilies.Load(UNetConditionFixture);
        var groups = PrunableGroups.Of(model);
        Assert.Contains(groups.Units, g => g is ResnetChannelGroup && g.Path == "down_blocks.0.resnets.0");
        Assert.Contains(groups.Units, g => g is AttentionHeadGroup && g.Path.EndsWith("transformer_blocks.0.attn1", StringComparison.Ordinal));
        Assert.Contains(groups.Units, g => g is AttentionHeadGroup && g.Path.EndsWith("transformer_blocks.0.attn2", StringComparison.Ordinal));
        var ff = Assert.IsType<GegluFeedForwardGroup>(groups.Units.First(g => g.Path == "down_blocks.0.attentions.0.transformer_blocks.0.ff"));
        Assert.Equal(128, ff.Units);
        // One neuron: its value row and gate row of net.0.proj (32 inputs + a bias each) and its column of net.2 (32 outputs).
        Assert.Equal(2 * (32 + 1) + 32, ff.ParametersPerUnit);
        Assert.Equal(new long[] { 3, 131 }, ff.Coupled.Single(c => c.Key.EndsWith("net.0.proj.weight", StringComparison.Ordinal)).Indices([3]));
        // Whole Transformer2DModels and the ResNets with in == out are removable layers; a transformer's attentions are not.
        Assert.Contains(groups.Layers, l => l.Kind == LayerKind.TransformerBlock && l.Path == "down_blocks.0.attentions.0");
        Assert.Contains(groups.Layers, l => l.Kind == LayerKind.ResnetBlock && l.Path == "mid_block.resnets.1");
        Assert.Contains("no residual connection of its own", groups.NotRemovable["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]);
        Assert.DoesNotContain(groups.Layers, l => l.Path == "down_blocks.1.resnets.0"); // 32 -> 64 channels
    }

    [Theory]
    [InlineData("fixture", false)]
    [InlineData("tiny", false)]
    [InlineData("fixture", true)]
    public void The_surgically_pruned_unet_equals_the_masked_original_on_text_conditioned_inputs(string which, bool removeLayers)
    {
        manual_seed(5);
        using var model = (UNet2DConditionModel)(which == "fixture" ? ModelFamilies.Load(UNetConditionFixture) : ModelFamilies.Create(ConfigJson.Parse(TinyConfig + "}")));
        var groups = PrunableGroups.Of(model);
        string[] removals = removeLayers ? ["up_blocks.1.attentions.0", "mid_block.resnets.1"] : [];
        var plan = RandomPlan(groups, seed: 7, removals);
        Assert.Contains(plan.Keep.Keys, k => groups.Unit(k) is GegluFeedForwardGroup);
        var conditioning = TextInputs(model, seed: 3, out var sample);

        using var original = RunText(model, sample, conditioning);
        Tensor masked;
        using (MaskedModel.Apply(model, plan)) masked = RunText(model, sample, conditioning);
        using var pruned = (UNet2DConditionModel)StructuralSurgery.Apply(model, plan);
        using var prunedOut = RunText(pruned, sample, conditioning);

        double error = Fixtures.RelativeError(prunedOut, masked);
        double change = Fixtures.RelativeError(masked, original);
        output.WriteLine($"{which}: pruned vs masked {error:E2}; masked vs original {change:E2}; parameters {model.ParameterCount()} -> {pruned.ParameterCount()}");
        Assert.True(error < Tolerance, $"pruned vs masked relative error {error:E2}");
        Assert.True(change > 1e-4, $"the plan barely changes the output ({change:E2}), so the comparison proves nothing");
        Assert.Equal(model.ParameterCount() - StructuralSurgery.RemovedParameters(model, plan), pruned.ParameterCount());
        masked.Dispose();

        // The kept widths are in the config: the pruned model reloads from config.json + safetensors and computes the same.
        using var temp = Fixtures.Temp();
        DiffusersModelLoader.Save(pruned, temp.Path);
        using var reloaded = ModelFamilies.Load(temp.Path);
        using var reloadedOut = RunText(reloaded, sample, conditioning);
        Assert.Equal(0.0, Fixtures.RelativeError(reloadedOut, prunedOut));
        Assert.Equal(pruned.ParameterCount(), reloaded.ParameterCount());
    }
}
