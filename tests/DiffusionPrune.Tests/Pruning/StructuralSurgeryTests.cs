using System.Text.Json.Nodes;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using TorchSharp;
using Xunit.Abstractions;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>
/// The surgery's contract: the dense pruned model computes what the original computes with the plan
/// as 0/1 gates, saves and reloads from config + safetensors, and composes with earlier pruning.
/// </summary>
public class StructuralSurgeryTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-5;

    // unet2d-small: down_blocks.0.resnets.1 is 32 -> 32; mid_block.attentions.0 and up_blocks.1.attentions.2 are residual attention blocks.
    private static readonly string[] UNetRemovals = ["down_blocks.0.resnets.1", "mid_block.attentions.0", "up_blocks.1.attentions.2"];
    // dit-small has three blocks; removing block 0 exercises the kept norm1.emb.
    private static readonly string[] DiTRemovals = ["transformer_blocks.0"];

    public static TheoryData<string> FixtureModels => new() { "unet", "dit" };

    private static (DiffusionModel model, string[] removals) LoadFixture(string which) => which == "unet"
        ? (ModelFamilies.Load(UNetFixture), UNetRemovals)
        : (ModelFamilies.Load(DiTFixture), DiTRemovals);

    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void Pruned_model_equals_the_masked_original(string which)
    {
        var (model, removals) = LoadFixture(which);
        using var _ = model;
        var groups = PrunableGroups.Of(model);
        var plan = RandomPlan(groups, seed: 11, removals);
        // The plan narrows every ResNet block, head group and feed-forward that it does not remove.
        foreach (var group in groups.Units.Where(g => !removals.Any(g.IsWithin)))
            Assert.True(plan.Keep[group.Path].Length < group.Units, $"{group.Path} is not narrowed");

        var inputs = Inputs(model, seed: 3);
        using var original = Run(model, inputs);
        using var masked = RunMasked(model, plan, inputs);
        using var pruned = StructuralSurgery.Apply(model, plan);
        using var prunedOut = Run(pruned, inputs);

        double error = Fixtures.RelativeError(prunedOut, masked);
        double change = Fixtures.RelativeError(masked, original);
        output.WriteLine($"{which}: pruned vs masked {error:E2}; masked vs original {change:E2}; parameters {model.ParameterCount()} -> {pruned.ParameterCount()}");
        Assert.True(error < Tolerance, $"pruned vs masked relative error {error:E2}");
        Assert.True(change > 1e-3, $"the plan barely changes the output ({change:E2}), so the comparison proves nothing");
        Assert.True(pruned.ParameterCount() < model.ParameterCount());

        // The original is untouched: its gates are cleared and its output is what it was.
        using var after = Run(model, inputs);
        Assert.Equal(0.0, Fixtures.RelativeError(after, original));
    }

    [Fact]
    public void Scale_shift_unet_with_resnet_resamplers_prunes_to_the_masked_output()
    {
        using var model = TinyScaleShiftUNet(seed: 4);
        var groups = PrunableGroups.Of(model);
        Assert.Contains(groups.Units, g => g.Path == "down_blocks.0.downsamplers.0");
        Assert.Contains(groups.Units, g => g.Path == "up_blocks.1.upsamplers.0");
        var plan = RandomPlan(groups, seed: 5, "mid_block.resnets.1", "down_blocks.1.attentions.0");

        var inputs = Inputs(model, seed: 6);
        using var masked = RunMasked(model, plan, inputs);
        using var pruned = StructuralSurgery.Apply(model, plan);
        using var prunedOut = Run(pruned, inputs);
        double error = Fixtures.RelativeError(prunedOut, masked);
        output.WriteLine($"scale_shift unet: pruned vs masked {error:E2}");
        Assert.True(error < Tolerance, $"pruned vs masked relative error {error:E2}");
    }

    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void Pruned_model_saves_and_reloads_with_its_narrowed_shapes(string which)
    {
        var (model, removals) = LoadFixture(which);
        using var _ = model;
        var groups = PrunableGroups.Of(model);
        var plan = RandomPlan(groups, seed: 21, removals);
        using var pruned = StructuralSurgery.Apply(model, plan);
        using var temp = Fixtures.Temp();
        DiffusersModelLoader.Save(pruned, temp.Path);

        var config = JsonNode.Parse(File.ReadAllText(temp.File("config.json")))!.AsObject();
        Assert.True(config.ContainsKey(ModelStructure.JsonKey), "config.json lacks dprune_structure");
        var removedJson = config[ModelStructure.JsonKey]!["removed_layers"]!.AsArray().Select(n => n!.GetValue<string>());
        Assert.Equal(removals.Order(StringComparer.Ordinal), removedJson);

        using var reloaded = ModelFamilies.Load(temp.Path);
        var state = reloaded.state_dict();
        foreach (var (path, kept) in plan.Keep)
            foreach (var coupled in groups.Unit(path)!.Coupled)
                Assert.Equal(coupled.Indices(kept).LongLength, state[coupled.Key].shape[coupled.Dim]);
        foreach (var layer in removals)
            Assert.DoesNotContain(state.Keys, k => k.StartsWith(layer + ".", StringComparison.Ordinal) && !k.StartsWith("transformer_blocks.0.norm1.emb.", StringComparison.Ordinal));
        Assert.Equal(pruned.ParameterCount(), reloaded.ParameterCount());

        var inputs = Inputs(model, seed: 8);
        using var before = Run(pruned, inputs);
        using var after = Run(reloaded, inputs);
        Assert.Equal(0.0, Fixtures.RelativeError(after, before));
    }

    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void Pruning_twice_matches_masking_of_the_twice_pruned_structure(string which)
    {
        var (model, removals) = LoadFixture(which);
        using var _ = model;
        var plan1 = RandomPlan(PrunableGroups.Of(model), seed: 31, removals[..1]);
        using var once = StructuralSurgery.Apply(model, plan1);

        // Second plan on the pruned model: narrow again and remove one more layer.
        string secondRemoval = which == "unet" ? "mid_block.resnets.1" : "transformer_blocks.2";
        var groups1 = PrunableGroups.Of(once);
        var plan2 = RandomPlan(groups1, seed: 32, secondRemoval);
        long predicted = StructuralSurgery.RemovedParameters(groups1, plan2);
        using var twice = StructuralSurgery.Apply(once, plan2);
        Assert.Equal(once.ParameterCount() - twice.ParameterCount(), predicted);
        Assert.Equal(new[] { removals[0], secondRemoval }.Order(StringComparer.Ordinal), twice.Structure.RemovedLayers);

        var inputs = Inputs(model, seed: 9);
        using var twiceOut = Run(twice, inputs);
        using var maskedOnce = RunMasked(once, plan2, inputs);
        var composed = PruningPlan.Compose(plan1, plan2);
        using var maskedOriginal = RunMasked(model, composed, inputs);
        double e1 = Fixtures.RelativeError(twiceOut, maskedOnce), e2 = Fixtures.RelativeError(twiceOut, maskedOriginal);
        output.WriteLine($"{which}: twice-pruned vs masked once-pruned {e1:E2}; vs original masked with the composed plan {e2:E2}");
        Assert.True(e1 < Tolerance, $"twice-pruned vs masked once-pruned {e1:E2}");
        Assert.True(e2 < Tolerance, $"twice-pruned vs masked original {e2:E2}");

        // The composed plan applied once gives the same structure and weights.
        using var direct = StructuralSurgery.Apply(model, composed);
        Assert.Equal(twice.ConfigToJson().ToJsonString(), direct.ConfigToJson().ToJsonString());
        using var directOut = Run(direct, inputs);
        Assert.Equal(0.0, Fixtures.RelativeError(directOut, twiceOut));
    }

    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void A_zero_layer_gate_is_exactly_layer_removal(string which)
    {
        var (model, removals) = LoadFixture(which);
        using var _ = model;
        var plan = new PruningPlan();
        foreach (var layer in removals) plan.RemovedLayers.Add(layer);
        var inputs = Inputs(model, seed: 12);
        using var masked = RunMasked(model, plan, inputs);
        using var pruned = StructuralSurgery.Apply(model, plan);
        using var prunedOut = Run(pruned, inputs);
        Assert.Equal(0.0, Fixtures.RelativeError(prunedOut, masked));
    }

    [Fact]
    public void Clearing_masks_restores_the_original_output()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var groups = PrunableGroups.Of(model);
        var plan = RandomPlan(groups, seed: 41, "mid_block.attentions.0");
        var inputs = Inputs(model, seed: 13);
        using var original = Run(model, inputs);
        var masked = MaskedModel.Apply(model, plan);
        Assert.NotNull(((ResnetChannelGroup)groups.Unit("mid_block.resnets.0")!).Block.ChannelGate);
        masked.Dispose();
        Assert.Null(((ResnetChannelGroup)groups.Unit("mid_block.resnets.0")!).Block.ChannelGate);
        using var after = Run(model, inputs);
        Assert.Equal(0.0, Fixtures.RelativeError(after, original));
    }
}
