using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using Xunit.Abstractions;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>Which groups a model has, what each unit carries, and exact parameter accounting.</summary>
public class PrunableGroupsTests(ITestOutputHelper output)
{
    [Fact]
    public void Unet_fixture_groups_are_found_with_state_dict_paths()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var groups = PrunableGroups.Of(model);
        var state = model.state_dict();
        // 3 down blocks x 2 + 2 mid + 3 up blocks x 3 ResNets; 2 + 1 + 3 attention blocks.
        Assert.Equal(17, groups.Units.OfType<ResnetChannelGroup>().Count());
        Assert.Equal(6, groups.Units.OfType<AttentionHeadGroup>().Count());
        Assert.Contains(groups.Units, g => g.Path == "up_blocks.2.resnets.0");
        Assert.All(groups.Units.SelectMany(g => g.Coupled), c => Assert.True(state.ContainsKey(c.Key), c.Key));

        // Removable: ResNets with in == out (down_blocks.0.resnets.0/1, down_blocks.1.resnets.1, down_blocks.2.resnets.0/1, mid 0/1) and all 6 attention blocks.
        var removable = groups.Layers.Select(l => l.Path).ToHashSet();
        Assert.Equal(13, removable.Count);
        Assert.Contains("down_blocks.0.resnets.0", removable);
        Assert.Contains("mid_block.resnets.1", removable);
        Assert.DoesNotContain("down_blocks.1.resnets.0", removable);
        Assert.DoesNotContain(removable, p => p.StartsWith("up_blocks.") && p.Contains("resnets"));

        // down_blocks.1.resnets.0: in 32, inner 64, out 64, time embedding 128:
        // conv1 32*9 + 1, norm2 2, time_emb_proj 128 + 1, conv2 64*9 per inner channel.
        var resnet = (ResnetChannelGroup)groups.Unit("down_blocks.1.resnets.0")!;
        Assert.Equal(64, resnet.Units);
        Assert.Equal(8, resnet.NormGroups);
        Assert.Equal(32 * 9 + 1 + 2 + 129 + 64 * 9, resnet.ParametersPerUnit);
        // an attention head of 8 channels in a 64-channel block: q/k/v 3 x (8 x 64 + 8), to_out 64 x 8.
        Assert.Equal(3 * (8 * 64 + 8) + 64 * 8, groups.Unit("mid_block.attentions.0")!.ParametersPerUnit);
    }

    [Fact]
    public void Dit_fixture_groups_cover_heads_neurons_and_blocks()
    {
        using var model = ModelFamilies.Load(DiTFixture);
        var groups = PrunableGroups.Of(model);
        Assert.Equal(["transformer_blocks.0.attn1", "transformer_blocks.0.ff", "transformer_blocks.1.attn1", "transformer_blocks.1.ff", "transformer_blocks.2.attn1", "transformer_blocks.2.ff"],
            groups.Units.Select(g => g.Path));
        Assert.Equal(["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"], groups.Layers.Select(l => l.Path));
        var ff = groups.Unit("transformer_blocks.1.ff")!;
        Assert.Equal(256, ff.Units); // 4 x 64
        Assert.Equal(64 + 1 + 64, ff.ParametersPerUnit);
        Assert.Equal(4, groups.Unit("transformer_blocks.1.attn1")!.Units);
        // Removing block 0 saves less than block 1 by exactly its kept norm1.emb.
        long emb = ((DiTBlock)groups.Layer("transformer_blocks.0")!.Module).Norm1.Emb.parameters().Sum(p => p.numel());
        Assert.Equal(groups.Layer("transformer_blocks.1")!.RemovedParameters - emb, groups.Layer("transformer_blocks.0")!.RemovedParameters);
    }

    public static TheoryData<string> AccountingModels => new() { "unet", "dit", "scale_shift" };

    [Theory]
    [MemberData(nameof(AccountingModels))]
    public void Predicted_removed_parameters_equal_the_actual_difference(string which)
    {
        using var model = which switch
        {
            "unet" => ModelFamilies.Load(UNetFixture),
            "dit" => ModelFamilies.Load(DiTFixture),
            _ => (DiffusionModel)TinyScaleShiftUNet(seed: 7),
        };
        string[] removals = which switch
        {
            "unet" => ["down_blocks.2.resnets.1", "up_blocks.1.attentions.0"],
            "dit" => ["transformer_blocks.0"],
            _ => ["mid_block.resnets.0", "up_blocks.1.attentions.0"],
        };
        var groups = PrunableGroups.Of(model);
        if (which == "scale_shift")
            Assert.All(groups.Units.OfType<ResnetChannelGroup>(), g => Assert.Equal("scale_shift", g.Block.TimeEmbeddingNorm));
        var plan = RandomPlan(groups, seed: 51, removals);
        long predicted = StructuralSurgery.RemovedParameters(model, plan);
        using var pruned = StructuralSurgery.Apply(model, plan);
        long actual = model.ParameterCount() - pruned.ParameterCount();
        output.WriteLine($"{which}: removed {actual} of {model.ParameterCount()} parameters");
        Assert.Equal(actual, predicted);

        // Per group, the formula agrees with the tensors too: removing one unit of a scale_shift block drops two time_emb_proj rows.
        if (which == "scale_shift")
        {
            var block = groups.Units.OfType<ResnetChannelGroup>().First(g => g.Block.TimeEmbProjModule is not null);
            long temb = block.Block.TimeEmbProjModule!.weight!.shape[1];
            long conv1 = block.Block.Conv1Module.weight!.shape[1] * 9 + 1, conv2 = block.Block.Conv2Module.weight!.shape[0] * 9;
            Assert.Equal(conv1 + 2 + 2 * (temb + 1) + conv2, block.ParametersPerUnit);
        }
    }

    [Fact]
    public void Keep_top_respects_groupnorm_and_mask_size_is_checked()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var groups = PrunableGroups.Of(model);
        var resnet = (ResnetChannelGroup)groups.Unit("down_blocks.0.resnets.0")!; // 32 channels, 8 groups of 4
        Assert.Equal(16, resnet.ValidKeepCount(17));
        Assert.Equal(8, resnet.ValidKeepCount(1));
        var scores = Enumerable.Range(0, 32).Select(i => (float)i).ToArray();
        Assert.Equal(Enumerable.Range(0, 8).SelectMany(g => new[] { 4 * g + 2, 4 * g + 3 }), resnet.KeepTop(scores, 16));
        Assert.Throws<ArgumentException>(() => resnet.KeepTop(scores, 12));
        Assert.Throws<ArgumentException>(() => resnet.ApplyMask(ones(31)));
        Assert.Throws<ArgumentException>(() => groups.Layer("mid_block.attentions.0")!.ApplyMask(ones(2)));
    }
}
