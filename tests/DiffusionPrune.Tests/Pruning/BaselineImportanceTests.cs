using DiffusionPrune.Data;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Importance;
using Xunit.Abstractions;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>The baseline criteria (random, magnitude, Diff-Pruning Taylor) and their factory.</summary>
public class BaselineImportanceTests(ITestOutputHelper output)
{
    private static readonly Lazy<MnistSplit> Train = new(() => MnistDataset.Load().Train);

    private static string SchedulerConfig => Fixtures.Diffusers("unet2d-small", "scheduler_config.json");

    private static ImportanceContext Context(long seed, int samples = 2) =>
        new(SchedulerConfig, Steps: 10, CalibrationSamples: samples, Seed: seed, Device: CPU);

    /// <summary>Cheap Taylor settings for tests: 2 timesteps (0, 500).</summary>
    private static TaylorImportance Taylor() => new(new TaylorOptions { TimestepStride = 500 }, Train.Value);

    /// <summary>
    /// A tiny class-conditional DiT on MNIST-shaped samples (1 x 32 x 32, patch 8: 16 tokens),
    /// learned sigma, 2 heads of 8 channels, 2 blocks, 10 classes.
    /// </summary>
    private static DiTTransformer2DModel TinyDiT(int seed)
    {
        manual_seed(seed);
        var model = new DiTTransformer2DModel(new DiTConfig
        {
            NumAttentionHeads = 2,
            AttentionHeadDim = 8,
            InChannels = 1,
            OutChannels = 2,
            NumLayers = 2,
            SampleSize = 32,
            PatchSize = 8,
            NumEmbedsAdaNorm = 10,
        });
        model.eval();
        return model;
    }

    private static DiffusionModel Load(string which) => which == "unet" ? ModelFamilies.Load(UNetFixture) : TinyDiT(seed: 5);

    private static IImportanceCriterion Criterion(string name) => name == "taylor" ? Taylor() : ImportanceCriteria.Create(name);

    /// <summary>Multiplies (or zeroes, factor 0) every weight unit <paramref name="unit"/> owns in every coupled tensor.</summary>
    private static void ScaleUnit(UnitGroup group, int unit, double factor)
    {
        using var noGrad = no_grad();
        foreach (var c in group.Coupled)
        {
            using var index = tensor(c.Indices([unit]));
            using var slice = c.Tensor.index_select(c.Dim, index);
            c.Tensor.index_copy_(c.Dim, index, slice * factor);
        }
    }

    public static TheoryData<string, string> CriteriaAndModels => new()
    {
        { "random", "unet" }, { "random", "dit" },
        { "magnitude", "unet" }, { "magnitude", "dit" },
        { "taylor", "unet" }, { "taylor", "dit" },
    };

    [Theory]
    [MemberData(nameof(CriteriaAndModels))]
    public void Every_criterion_scores_every_unit_of_every_group_with_a_finite_value(string criterion, string which)
    {
        using var model = Load(which);
        var groups = PrunableGroups.Of(model);
        var scores = Criterion(criterion).Score(model, groups, Context(seed: 1));

        Assert.Equal(groups.Units.Select(g => g.Path).Order(StringComparer.Ordinal), scores.ByGroup.Keys);
        foreach (var group in groups.Units)
        {
            Assert.Equal(group.Units, scores[group.Path].Length);
            Assert.All(scores[group.Path], s => Assert.True(float.IsFinite(s) && s >= 0, $"{group.Path}: {s}"));
        }
        // A criterion that scores a whole group as zeros would give the selector nothing to rank.
        Assert.All(groups.Units, g => Assert.True(scores[g.Path].Max() > 0, $"{criterion}: every unit of {g.Path} scores 0"));
        output.WriteLine($"{criterion} on {which}: {groups.Units.Count} groups, {groups.Units.Sum(g => g.Units)} units");
    }

    [Fact]
    public void Random_scores_are_reproducible_per_seed_and_differ_across_seeds()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var groups = PrunableGroups.Of(model);
        var criterion = new RandomImportance();
        var first = criterion.Score(model, groups, Context(seed: 7));
        var again = criterion.Score(model, groups, Context(seed: 7));
        var other = criterion.Score(model, groups, Context(seed: 8));
        foreach (var group in groups.Units)
        {
            Assert.Equal(first[group.Path], again[group.Path]);
            Assert.NotEqual(first[group.Path], other[group.Path]);
            Assert.All(first[group.Path], s => Assert.InRange(s, 0f, 1f));
        }
        // Groups of equal width do not share a sequence.
        Assert.NotEqual(first["down_blocks.0.resnets.0"], first["down_blocks.0.resnets.1"]);
    }

    [Fact]
    public void Magnitude_is_the_l1_norm_over_all_coupled_slices_per_parameter()
    {
        // scale_shift (two time_emb_proj rows per channel) and attention heads (blocks of rows): the indices matter.
        using var model = TinyScaleShiftUNet(seed: 3);
        var groups = PrunableGroups.Of(model);
        var raw = new MagnitudeImportance(UnitNormalization.None).Score(model, groups, Context(seed: 0));
        var perParameter = new MagnitudeImportance().Score(model, groups, Context(seed: 0));
        var groupMean = new MagnitudeImportance(UnitNormalization.GroupMean).Score(model, groups, Context(seed: 0));
        foreach (var group in groups.Units)
        {
            for (int unit = 0; unit < group.Units; unit++)
            {
                double expected = group.Coupled.Sum(c =>
                {
                    using var index = tensor(c.Indices([unit]));
                    return c.Tensor.detach().index_select(c.Dim, index).abs().sum().to_type(ScalarType.Float64).item<double>();
                });
                Assert.Equal(expected, raw[group.Path][unit], expected * 1e-5);
                Assert.Equal(expected / group.ParametersPerUnit, perParameter[group.Path][unit], expected / group.ParametersPerUnit * 1e-5);
            }
            Assert.Equal(1.0, groupMean[group.Path].Average(), 1e-5);
        }
    }

    [Fact]
    public void Magnitude_ranks_a_scaled_up_unit_highest_and_a_zeroed_unit_at_zero()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var groups = PrunableGroups.Of(model);
        var resnet = groups.Unit("down_blocks.1.resnets.0")!;
        var heads = groups.Unit("mid_block.attentions.0")!;
        var before = new MagnitudeImportance().Score(model, groups, Context(seed: 0));
        int weakest = Array.IndexOf(before[resnet.Path], before[resnet.Path].Min());
        Assert.NotEqual(weakest, Array.IndexOf(before[resnet.Path], before[resnet.Path].Max()));

        ScaleUnit(resnet, weakest, 10);
        ScaleUnit(resnet, 5, 0);
        ScaleUnit(heads, 1, 0);
        var after = new MagnitudeImportance().Score(model, groups, Context(seed: 0));

        Assert.Equal(weakest, Array.IndexOf(after[resnet.Path], after[resnet.Path].Max()));
        Assert.Equal(0f, after[resnet.Path][5]);
        Assert.Equal(0f, after[heads.Path][1]);
        Assert.All(after[heads.Path].Where((_, i) => i != 1), s => Assert.True(s > 0));
    }

    [Fact]
    public void Taylor_scores_a_zeroed_unit_zero_and_leaves_the_model_as_it_was()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var groups = PrunableGroups.Of(model);
        var resnet = groups.Unit("up_blocks.0.resnets.1")!;
        var heads = groups.Unit("down_blocks.1.attentions.0")!;
        ScaleUnit(resnet, 3, 0);
        ScaleUnit(heads, 0, 0);
        var weights = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        var requiresGrad = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.requires_grad);
        bool training = model.training;

        var taylor = Taylor();
        var log = new List<string>();
        var scores = taylor.Score(model, groups, Context(seed: 2) with { Log = log.Add });
        foreach (var line in log) output.WriteLine(line);

        Assert.Equal(0f, scores[resnet.Path][3]);
        Assert.Equal(0f, scores[heads.Path][0]);
        Assert.All(scores[resnet.Path].Where((_, i) => i != 3), s => Assert.True(s > 0));
        // Weights bit-identical, no gradient kept, flags and mode restored.
        foreach (var (name, value) in model.state_dict())
            Assert.True(value.eq(weights[name]).all().item<bool>(), $"{name} changed");
        foreach (var (name, p) in model.named_parameters())
        {
            Assert.True(p.grad is null, $"{name} keeps a gradient");
            Assert.Equal(requiresGrad[name], p.requires_grad);
        }
        Assert.Equal(training, model.training);
        Assert.Contains(taylor.LastTrace, s => s.Accumulated);
        foreach (var w in weights.Values) w.Dispose();
    }

    [Fact]
    public void Taylor_scores_are_reproducible_per_seed()
    {
        using var model = TinyScaleShiftUNet(seed: 4);
        var groups = PrunableGroups.Of(model);
        // The tiny U-Net takes 2 x 8 x 8 samples; Taylor calibrates on MNIST, so it must refuse it clearly.
        var refusal = Assert.Throws<ArgumentException>(() => Taylor().Score(model, groups, Context(seed: 1)));
        Assert.Contains("MNIST", refusal.Message);

        using var dit = TinyDiT(seed: 9);
        var ditGroups = PrunableGroups.Of(dit);
        var first = Taylor().Score(dit, ditGroups, Context(seed: 1, samples: 3));
        var again = Taylor().Score(dit, ditGroups, Context(seed: 1, samples: 3));
        var other = Taylor().Score(dit, ditGroups, Context(seed: 2, samples: 3));
        foreach (var path in first.ByGroup.Keys)
        {
            Assert.Equal(first[path], again[path]);
            Assert.NotEqual(first[path], other[path]);
        }
    }

    [Fact]
    public void Informative_timestep_rule_stops_at_the_first_loss_below_thr_times_the_running_max()
    {
        // Diff-Pruning's curve: large at small t, falling with noise. 0.04 < 0.05 * 1.0 ends it; the late 0.5 is not used.
        Assert.Equal(5, InformativeTimestepRule.InformativeCount([1.0, 0.6, 0.3, 0.1, 0.06, 0.04, 0.5, 0.01], 0.05));
        // Exactly thr * L_max is still informative.
        Assert.Equal(3, InformativeTimestepRule.InformativeCount([2.0, 1.0, 0.1, 0.09], 0.05));
        // L_max is a running maximum: a rise after t = 0 raises the bar for what follows.
        Assert.Equal(3, InformativeTimestepRule.InformativeCount([0.2, 1.0, 0.5, 0.049, 0.3], 0.05));
        // A flat curve never stops; thr 0 accepts everything.
        Assert.Equal(4, InformativeTimestepRule.InformativeCount([0.3, 0.3, 0.3, 0.3], 0.05));
        Assert.Equal(3, InformativeTimestepRule.InformativeCount([1.0, 1e-9, 0.0], 0.0));

        var rule = new InformativeTimestepRule(0.05);
        Assert.True(rule.Accept(0.5));
        Assert.False(rule.Accept(0.01));
        Assert.True(rule.Stopped);
        Assert.False(rule.Accept(0.5)); // once stopped, stays stopped
        Assert.Equal(0.5, rule.MaxLoss);
        Assert.Throws<ArgumentOutOfRangeException>(() => new InformativeTimestepRule(0.05).Accept(double.NaN));
        Assert.Throws<ArgumentOutOfRangeException>(() => new InformativeTimestepRule(1.5));
    }

    [Fact]
    public void Taylor_accumulates_only_the_informative_prefix_of_the_timestep_grid()
    {
        Assert.Equal([0L, 50, 100, 950], TaylorImportance.TimestepGrid(1000, 50).Where((_, i) => i is 0 or 1 or 2 or 19));
        Assert.Equal(20, TaylorImportance.TimestepGrid(1000, 50).Length);
        Assert.Equal([0L, 300, 600, 900], TaylorImportance.TimestepGrid(1000, 300));

        // thr 1 stops at the first loss below the running maximum (here the untrained DiT's t = 100).
        using var dit = TinyDiT(seed: 9);
        var groups = PrunableGroups.Of(dit);
        var stopping = new TaylorImportance(new TaylorOptions { TimestepStride = 100, Threshold = 1.0 }, Train.Value);
        var stopped = stopping.Score(dit, groups, Context(seed: 1));
        var trace = stopping.LastTrace;
        foreach (var step in trace) output.WriteLine(step.ToString());
        var grid = TaylorImportance.TimestepGrid(1000, 100);
        int informative = InformativeTimestepRule.InformativeCount(trace.Select(s => s.Loss), 1.0);
        Assert.Equal(1, informative); // the loss falls from t = 0 to t = 100; otherwise this test proves less
        Assert.Equal(grid.Take(trace.Count), trace.Select(s => s.Timestep)); // ascending grid, no timestep skipped
        Assert.Equal(informative + 1, trace.Count); // the loop ends at the first rejected timestep
        Assert.Equal(Enumerable.Range(0, trace.Count).Select(i => i < informative), trace.Select(s => s.Accumulated));

        // The rejected timestep's gradient is not in the sum: the scores equal those of a grid holding only t = 0.
        var onlyFirst = new TaylorImportance(new TaylorOptions { TimestepStride = 1000, Threshold = 0 }, Train.Value).Score(dit, groups, Context(seed: 1));
        foreach (var path in stopped.ByGroup.Keys)
            Assert.Equal(onlyFirst[path], stopped[path]);
    }

    [Fact]
    public void Factory_creates_criteria_by_name_and_lists_the_known_names_otherwise()
    {
        Assert.IsType<RandomImportance>(ImportanceCriteria.Create("random"));
        Assert.IsType<MagnitudeImportance>(ImportanceCriteria.Create("Magnitude"));
        Assert.IsType<TaylorImportance>(ImportanceCriteria.Create("taylor"));
        Assert.All(ImportanceCriteria.All, e => Assert.Equal(e.Name, e.RemovesLayers ? ImportanceCriteria.CreateLayers(e.Name).Name : ImportanceCriteria.Create(e.Name).Name));
        var error = Assert.Throws<ArgumentException>(() => ImportanceCriteria.Create("l2"));
        Assert.Contains("'l2'", error.Message);
        Assert.Contains("ecodiff, ecodiff-layer, laptop, ldpruner, learnable-depth, magnitude, random, random-layer, taylor", error.Message);
    }

    [Fact]
    public void Rounded_widths_keep_multiples_of_8_and_still_meet_the_target()
    {
        // A DiT: its feed-forward neurons are pruned one at a time (a GroupNorm'd ResNet already moves in steps of its group count).
        using var model = TinyDiT(seed: 5);
        var groups = PrunableGroups.Of(model);
        var scores = ImportanceCriteria.Create("magnitude").Score(model, groups, Context(seed: 1));
        var free = PlanSelector.Select(groups, scores, 0.15);
        var rounded = PlanSelector.Select(groups, scores, 0.15, roundTo: 8);
        Assert.True(rounded.AchievedRemovedFraction >= 0.15);
        Assert.NotEmpty(rounded.Plan.Keep);
        foreach (var (path, kept) in rounded.Plan.Keep)
            if (groups.Unit(path) is ResnetChannelGroup or FeedForwardGroup)
                Assert.True(kept.Length % 8 == 0, $"{path} keeps {kept.Length}");
        Assert.Contains(free.Plan.Keep, kv => groups.Unit(kv.Key) is FeedForwardGroup && kv.Value.Length % 8 != 0); // the rounding changed something
        Assert.Equal(free.Plan.Keep.Keys.Order(), PlanSelector.Select(groups, scores, 0.15, roundTo: 1).Plan.Keep.Keys.Order());
        Assert.Throws<PruningPlanException>(() => PlanSelector.Select(groups, scores, 0.15, roundTo: 0));
    }
}
