using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>Plans as data: JSON round trip, composition, and clear errors for plans that do not fit the model.</summary>
public class PruningPlanTests
{
    private static readonly Lazy<DiffusionModel> UNet = new(() => ModelFamilies.Load(UNetFixture));

    private static PruningPlanException Invalid(PruningPlan plan)
    {
        var groups = PrunableGroups.Of(UNet.Value);
        var e = Assert.Throws<PruningPlanException>(() => plan.Validate(groups));
        // Surgery refuses the same plan before building anything.
        Assert.Throws<PruningPlanException>(() => StructuralSurgery.Apply(UNet.Value, plan));
        return e;
    }

    private static PruningPlan Keep(string path, params int[] kept)
    {
        var plan = new PruningPlan();
        plan.Keep[path] = kept;
        return plan;
    }

    [Fact]
    public void Plan_round_trips_through_json()
    {
        var plan = RandomPlan(PrunableGroups.Of(UNet.Value), seed: 1, "mid_block.attentions.0");
        using var temp = Fixtures.Temp();
        plan.Save(temp.File("plan.json"));
        var loaded = PruningPlan.Load(temp.File("plan.json"));
        Assert.Equal(plan.Keep.Keys, loaded.Keep.Keys);
        foreach (var (path, kept) in plan.Keep) Assert.Equal(kept, loaded.Keep[path]);
        Assert.Equal(plan.RemovedLayers, loaded.RemovedLayers);
        Assert.Equal(plan.ToJsonString(), loaded.ToJsonString());
    }

    [Theory]
    [InlineData("[1, 2]", "must be a JSON object")]
    [InlineData("{\"keep\": {\"mid_block.resnets.0\": 3}}", "mid_block.resnets.0")]
    [InlineData("{\"keep\": {\"mid_block.resnets.0\": [\"a\"]}}", "not a valid pruning plan")]
    [InlineData("{\"removed_layers\": \"mid_block.attentions.0\"}", "removed_layers")]
    [InlineData("{\"keep\": ", "not a valid pruning plan")]
    public void Malformed_plan_json_is_a_clear_error(string json, string expected)
    {
        var e = Assert.Throws<PruningPlanException>(() => PruningPlan.Parse(json));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Empty_group_is_an_error()
    {
        var e = Invalid(Keep("down_blocks.1.attentions.0"));
        Assert.Contains("down_blocks.1.attentions.0", e.Message);
        Assert.Contains("at least one", e.Message);
    }

    [Fact]
    public void Uneven_keep_across_groupnorm_groups_is_an_error()
    {
        // mid_block.resnets.0: 64 inner channels in 8 norm groups of 8. Keeping 8 channels all from group 0 is uneven.
        var e = Invalid(Keep("mid_block.resnets.0", Enumerable.Range(0, 8).ToArray()));
        Assert.Contains("mid_block.resnets.0", e.Message);
        Assert.Contains("same number", e.Message);
        // A count that is not a multiple of the group count cannot be even either.
        var e2 = Invalid(Keep("mid_block.resnets.0", Enumerable.Range(0, 9).Select(i => i * 7).ToArray()));
        Assert.Contains("multiple of 8", e2.Message);
        // One channel from each group is fine.
        Keep("mid_block.resnets.0", Enumerable.Range(0, 8).Select(i => i * 8 + 3).ToArray()).Validate(PrunableGroups.Of(UNet.Value));
    }

    [Fact]
    public void Out_of_range_or_repeated_index_is_an_error()
    {
        // down_blocks.1.attentions.0: 64 channels / head dim 8 = 8 heads.
        var e = Invalid(Keep("down_blocks.1.attentions.0", 0, 8));
        Assert.Contains("down_blocks.1.attentions.0", e.Message);
        Assert.Contains("index 8", e.Message);
        Assert.Contains("-1", Invalid(Keep("down_blocks.1.attentions.0", -1, 2)).Message);
        Assert.Contains("distinct", Invalid(Keep("down_blocks.1.attentions.0", 2, 2)).Message);
    }

    [Fact]
    public void Removing_a_resnet_whose_in_and_out_channels_differ_is_an_error_naming_it()
    {
        var plan = new PruningPlan();
        plan.RemovedLayers.Add("down_blocks.1.resnets.0"); // 32 -> 64 channels
        var e = Invalid(plan);
        Assert.Contains("down_blocks.1.resnets.0", e.Message);
        Assert.Contains("32", e.Message);
        Assert.Contains("64", e.Message);
    }

    [Fact]
    public void Unknown_paths_and_groups_inside_removed_layers_are_errors()
    {
        Assert.Contains("down_blocks.9.resnets.0", Invalid(Keep("down_blocks.9.resnets.0", 0)).Message);
        var plan = new PruningPlan();
        plan.RemovedLayers.Add("up_blocks.0.upsamplers.0"); // a conv upsampler: not a residual layer
        Assert.Contains("up_blocks.0.upsamplers.0", Invalid(plan).Message);

        var both = Keep("mid_block.attentions.0", 0, 1);
        both.RemovedLayers.Add("mid_block.attentions.0");
        Assert.Contains("drop one", Invalid(both).Message);
    }

    [Fact]
    public void Compose_maps_second_plan_indices_through_the_first()
    {
        var first = Keep("a", 1, 3, 5, 7);
        first.Keep["b"] = [0, 2];
        var second = Keep("a", 0, 2);
        second.Keep["c"] = [4];
        second.RemovedLayers.Add("b");
        var composed = PruningPlan.Compose(first, second);
        Assert.Equal(new[] { 1, 5 }, composed.Keep["a"]);
        Assert.Equal(new[] { 4 }, composed.Keep["c"]);
        Assert.False(composed.Keep.ContainsKey("b"));
        Assert.Equal(new[] { "b" }, composed.RemovedLayers);
    }
}
