using DiffusionPrune.Cli.Commands;
using DiffusionPrune.Pruning;
using DiffusionPrune.Schedulers;
using Xunit;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>
/// The switches between our EcoDiff and the official code's (issue 17): which unit types get gates, how the
/// regulariser is averaged, the logits' weight decay, per-type binarisation, and that a run records them.
/// </summary>
public class EcoDiffOptionsTests
{
    private static string SchedulerConfigPath => Fixtures.Diffusers("unet2d-small", "scheduler_config.json");

    private static EcoDiffObjective Objective(DiffusionPrune.Models.DiffusionModel model, IDiffusionScheduler scheduler, EcoDiffOptions options) =>
        new(model, PrunableGroups.Of(model), scheduler, steps: 2, calibrationSamples: 2, options, seed: 3);

    [Fact]
    public void Only_the_unit_types_asked_for_get_gates_and_scores_and_the_plan_leaves_the_others_whole()
    {
        using var model = EcoDiffTests.TinyDiT(5);
        using var scheduler = Scheduler.FromFile(SchedulerConfigPath, "ddim");
        using (var heads = Objective(model, scheduler, new EcoDiffOptions { UnitTypes = EcoDiffUnitTypes.Heads }))
            Assert.All(heads.Gates, g => Assert.IsType<AttentionHeadGroup>(g.Group));
        using (var ffn = Objective(model, scheduler, new EcoDiffOptions { UnitTypes = EcoDiffUnitTypes.FeedForward }))
            Assert.All(ffn.Gates, g => Assert.IsType<FeedForwardGroup>(g.Group));
        using (var both = Objective(model, scheduler, new EcoDiffOptions { UnitTypes = EcoDiffUnitTypes.Heads | EcoDiffUnitTypes.FeedForward }))
            Assert.Equal(PrunableGroups.Of(model).Units.Count, both.Gates.Count); // a DiT has no ResNet channels

        using var unet = EcoDiffTests.TinyUNet(5);
        var refused = Assert.Throws<ArgumentException>(() => Objective(unet, scheduler, new EcoDiffOptions { UnitTypes = EcoDiffUnitTypes.FeedForward }));
        Assert.Contains("no units of the types asked for", refused.Message);

        // scored heads only: the channels are left whole by the plan
        var groups = PrunableGroups.Of(unet);
        var criterion = new EcoDiffImportance(new EcoDiffOptions { UnitTypes = EcoDiffUnitTypes.Heads, Iterations = 2 });
        var scores = criterion.Score(unet, groups, new ImportanceContext(SchedulerConfigPath, 2, 2, 1, CPU, "ddim", null, null, default));
        Assert.All(scores.ByGroup.Keys, path => Assert.IsType<AttentionHeadGroup>(groups.Unit(path)));
        long headParameters = groups.Units.OfType<AttentionHeadGroup>().Sum(g => g.ParametersPerUnit * (g.Units - 1));
        var selection = PlanSelector.Select(groups, scores, 0.5 * headParameters / unet.ParameterCount());
        Assert.NotEmpty(selection.Plan.Keep);
        Assert.All(selection.Plan.Keep.Keys, path => Assert.IsType<AttentionHeadGroup>(groups.Unit(path)));
    }

    [Fact]
    public void The_regulariser_is_averaged_over_units_or_per_layer_and_type()
    {
        using var model = EcoDiffTests.TinyUNet(5);
        using var scheduler = Scheduler.FromFile(SchedulerConfigPath, "ddim");
        // L1 of logits that all start at 3: the mean over units is 3; per layer 3, over each type's layers 3, summed over
        // the two types this U-Net has (channels and heads) 6
        using (var units = Objective(model, scheduler, new EcoDiffOptions { Regularizer = SparsityRegularizer.L1, ParameterWeighted = false }))
        using (var r = units.Regularizer())
            Assert.Equal(3.0, r.item<float>(), 4);
        using (var layers = Objective(model, scheduler, new EcoDiffOptions { Regularizer = SparsityRegularizer.L1, RegularizerMean = RegularizerMean.Layers }))
        using (var r = layers.Regularizer())
            Assert.Equal(6.0, r.item<float>(), 4);
        // with logits that differ per layer, every layer counts the same whatever its width
        using (var layers = Objective(model, scheduler, new EcoDiffOptions { Regularizer = SparsityRegularizer.L1, RegularizerMean = RegularizerMean.Layers, UnitTypes = EcoDiffUnitTypes.Channels }))
        {
            using (no_grad())
                for (int i = 0; i < layers.Gates.Count; i++) layers.Gates[i].Gate.Logits.fill_(i + 1.0);
            using var r = layers.Regularizer();
            Assert.Equal(Enumerable.Range(1, layers.Gates.Count).Average(), r.item<float>(), 4);
        }
    }

    [Fact]
    public void Weight_decay_pulls_every_logit_toward_zero_by_lr_times_decay_of_itself_per_iteration()
    {
        float[] Logits(double decay)
        {
            using var model = EcoDiffTests.TinyUNet(5);
            var criterion = new EcoDiffImportance(new EcoDiffOptions { Iterations = 1, LearningRate = 0.1, WeightDecay = decay, Beta = 0 });
            var scores = criterion.Score(model, PrunableGroups.Of(model), new ImportanceContext(SchedulerConfigPath, 2, 2, 1, CPU, "ddim", null, null, default));
            return scores.ByGroup.OrderBy(kv => kv.Key, StringComparer.Ordinal).SelectMany(kv => kv.Value).ToArray();
        }
        var plain = Logits(0);
        var decayed = Logits(0.5);
        // AdamW: the decay is decoupled (p *= 1 - lr * decay before the Adam step), and Adam's first step is lr * sign(g).
        // The two runs' gradients are equal up to summation order, so a unit whose gradient is ~0 may step either way
        // (or not at all) in each run: its difference is -0.15 plus a multiple of 0.1. Every other unit differs by
        // exactly the decay, -lr * decay * 3 = -0.15.
        var differences = plain.Select((p, i) => decayed[i] - p).ToArray();
        Assert.All(differences, d => Assert.Contains(new[] { -0.35, -0.25, -0.15, -0.05, 0.05 }, k => Math.Abs(d - k) < 1e-4));
        Assert.True(differences.Count(d => Math.Abs(d + 0.15) < 1e-4) >= 0.9 * differences.Length,
            $"only {differences.Count(d => Math.Abs(d + 0.15) < 1e-4)} of {differences.Length} logits moved by exactly the decay");
        Assert.Throws<ArgumentException>(() => new EcoDiffOptions { WeightDecay = -1 }.Validate());
        Assert.Throws<ArgumentException>(() => new EcoDiffOptions { UnitTypes = 0 }.Validate());
    }

    [Fact]
    public void Per_type_binarisation_removes_the_same_fraction_of_every_unit_types_units()
    {
        manual_seed(5);
        using var model = new DiffusionPrune.Models.DiTTransformer2DModel(new DiffusionPrune.Models.DiTConfig
        {
            NumAttentionHeads = 8, AttentionHeadDim = 4, InChannels = 1, NumLayers = 2, SampleSize = 8, PatchSize = 4, NumEmbedsAdaNorm = 5, NormNumGroups = 1,
        });
        var groups = PrunableGroups.Of(model);
        // scores that would, ranked globally, take every head before any neuron
        var scores = new UnitScores();
        foreach (var g in groups.Units)
            scores[g.Path] = Enumerable.Range(0, g.Units).Select(i => (g is AttentionHeadGroup ? -10f : 10f) + 0.01f * i).ToArray();
        var global = PlanSelector.Select(groups, scores, 0.1, SelectionScope.Global);
        var perType = PlanSelector.Select(groups, scores, 0.1, SelectionScope.PerType);
        double Removed<T>(PruningPlan plan) where T : UnitGroup =>
            groups.Units.OfType<T>().Sum(g => g.Units - (plan.Keep.TryGetValue(g.Path, out var kept) ? kept.Length : g.Units))
            / (double)groups.Units.OfType<T>().Sum(g => g.Units);
        Assert.Equal(0, Removed<FeedForwardGroup>(global.Plan)); // globally the heads go first, and suffice
        Assert.True(Removed<AttentionHeadGroup>(global.Plan) > 0.5);
        double heads = Removed<AttentionHeadGroup>(perType.Plan), neurons = Removed<FeedForwardGroup>(perType.Plan);
        Assert.True(neurons > 0, "per type, the neurons lose their share");
        int totalHeads = groups.Units.OfType<AttentionHeadGroup>().Sum(g => g.Units);
        Assert.InRange(Math.Abs(heads - neurons), 0, 1.0 / totalHeads + 1e-9); // within one step of the coarser type
        Assert.True(perType.AchievedRemovedFraction >= 0.1);
    }

    [Fact]
    public void The_cli_names_unit_types_and_a_run_records_every_setting()
    {
        Assert.Equal(EcoDiffUnitTypes.Heads | EcoDiffUnitTypes.FeedForward, PruneCommand.ParseUnitTypes("heads, ffn"));
        Assert.Equal(EcoDiffUnitTypes.All, PruneCommand.ParseUnitTypes("channels,heads,ffn"));
        Assert.Contains("not 'convs'", Assert.Throws<ArgumentException>(() => PruneCommand.ParseUnitTypes("heads,convs")).Message);

        using var temp = Fixtures.Temp();
        string folder = Fixtures.TinyEvaluableUNet(temp);
        using var model = DiffusionPrune.Families.ModelFamilies.Load(folder);
        var request = new PruneRequest
        {
            ModelPath = folder, Method = "ecodiff", TargetParams = 0.01, Steps = 2, Iterations = 2, Calibration = 2, Scope = SelectionScope.PerType,
            MinKeepFraction = 0.5,
            EcoDiff = new EcoDiffOptions
            {
                UnitTypes = EcoDiffUnitTypes.Heads, RegularizerMean = RegularizerMean.Layers, Regularizer = SparsityRegularizer.L1, WeightDecay = 0.01,
                Damping = 0.5, Beta = 1, ParameterWeighted = false,
            },
        };
        using var pruned = PruneRunner.Prune(model, request, Path.Combine(folder, DiffusionPrune.Formats.ModelFolder.SchedulerConfig), CPU);
        var settings = pruned.Report.ToJson()["settings"]!;
        Assert.Equal("heads", (string?)settings["unit_types"]);
        Assert.Equal("layers", (string?)settings["regularizer_mean"]);
        Assert.Equal("L1", (string?)settings["regularizer"]);
        Assert.Equal(0.01, (double)settings["weight_decay"]!);
        Assert.Equal(0.5, (double)settings["damping"]!);
        Assert.Equal("PerType", (string?)settings["scope"]);
        Assert.Equal(0.5, (double)settings["min_keep_fraction"]!);
        Assert.All(pruned.Report.KeptFractionPerLayer.Where(kv => !kv.Key.Contains("attentions", StringComparison.Ordinal)), kv => Assert.Equal(1.0, kv.Value));
    }

    [Fact]
    public void A_target_the_asked_unit_types_cannot_reach_is_refused_before_any_iteration_and_with_all_types_it_runs()
    {
        using var temp = Fixtures.Temp();
        string folder = Fixtures.TinyEvaluableUNet(temp);
        using var model = DiffusionPrune.Families.ModelFamilies.Load(folder);
        var groups = PrunableGroups.Of(model);
        double headsReach = groups.Units.OfType<AttentionHeadGroup>().Sum(g => g.ParametersPerUnit * (g.Units - PlanSelector.MinimumKeep(g, 0.1)))
            / (double)model.ParameterCount();
        string scheduler = Path.Combine(folder, DiffusionPrune.Formats.ModelFolder.SchedulerConfig);
        PruneRequest Request(double target, EcoDiffUnitTypes types) => new()
        {
            ModelPath = folder, Method = "ecodiff", TargetParams = target, Steps = 2, Iterations = 2, Calibration = 2,
            EcoDiff = new EcoDiffOptions { UnitTypes = types },
        };

        int iterations = 0;
        var refused = Assert.Throws<PruningPlanException>(() =>
            PruneRunner.Prune(model, Request(headsReach + 0.02, EcoDiffUnitTypes.Heads), scheduler, CPU, onIteration: _ => iterations++));
        Assert.Equal(0, iterations); // refused before the mask learning, not after it
        Assert.Contains("when only the unit types heads are pruned", refused.Message);
        Assert.Contains($"at most {headsReach:P2}", refused.Message);

        // the same target with every unit type is reachable, and the check counts what the selection can remove
        using var pruned = PruneRunner.Prune(model, Request(headsReach + 0.02, EcoDiffUnitTypes.All), scheduler, CPU, onIteration: _ => iterations++);
        Assert.Equal(2, iterations);
        Assert.True(pruned.Report.AchievedParams >= headsReach + 0.02);
        // and a target the heads alone can reach still runs with heads only
        using var heads = PruneRunner.Prune(model, Request(headsReach / 2, EcoDiffUnitTypes.Heads), scheduler, CPU);
        Assert.True(heads.Report.AchievedParams >= headsReach / 2);
    }
}
