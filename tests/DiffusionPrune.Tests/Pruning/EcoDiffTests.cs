using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using DiffusionPrune.Schedulers;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>
/// EcoDiff: hard-concrete gate math, the time-step gradient checkpointing (same mask gradients as the whole
/// graph), the optimisation itself on tiny models, and the parameter-budget plan selector.
/// </summary>
public class EcoDiffTests(ITestOutputHelper output)
{
    private static string SchedulerConfigPath => Fixtures.Diffusers("unet2d-small", "scheduler_config.json");

    // ---- tiny models (a few thousand parameters, 8 x 8) ----

    /// <summary>Unconditional U-Net, 8/16 channels, 4 norm groups, one attention level with heads of 4 channels.</summary>
    internal static UNet2DModel TinyUNet(int seed)
    {
        manual_seed(seed);
        var model = new UNet2DModel(new UNet2DConfig
        {
            SampleSize = [8, 8],
            InChannels = 1,
            OutChannels = 1,
            BlockOutChannels = [8, 16],
            DownBlockTypes = ["DownBlock2D", "AttnDownBlock2D"],
            UpBlockTypes = ["AttnUpBlock2D", "UpBlock2D"],
            LayersPerBlock = 1,
            NormNumGroups = 4,
            AttentionHeadDim = 4,
        });
        Perturb(model);
        return model;
    }

    /// <summary>Class-conditional DiT: 1 block, 2 heads of 8, patch 4, 5 classes (+ null), 8 x 8.</summary>
    internal static DiTTransformer2DModel TinyDiT(int seed)
    {
        manual_seed(seed);
        var model = new DiTTransformer2DModel(new DiTConfig
        {
            NumAttentionHeads = 2, AttentionHeadDim = 8, InChannels = 1, NumLayers = 1,
            SampleSize = 8, PatchSize = 4, NumEmbedsAdaNorm = 5, NormNumGroups = 1,
        });
        Perturb(model);
        return model;
    }

    // Fresh norms are the identity (and a DiT trained from scratch starts its adaLN layers at zero, InitializeForTraining), which would hide the gates; perturb everything.
    private static void Perturb(DiffusionModel model)
    {
        using var noGrad = no_grad();
        foreach (var p in model.parameters()) p.add_(randn(p.shape) * 0.1);
        model.eval();
    }

    private static DiffusionModel Build(string which) => which == "unet" ? TinyUNet(7) : TinyDiT(7);

    private static Dictionary<string, float[]> MaskGradients(DiffusionModel model, string schedulerName, EcoDiffOptions options, int steps)
    {
        using var scheduler = Scheduler.FromFile(SchedulerConfigPath, schedulerName, ddimEta: schedulerName == "ddim-eta" ? 0.5 : 0.0);
        using var objective = new EcoDiffObjective(model, PrunableGroups.Of(model), scheduler, steps, calibrationSamples: 2, options, seed: 42);
        objective.Backward(0);
        return objective.Gates.ToDictionary(g => g.Group.Path, g => g.Gate.Logits.grad!.data<float>().ToArray());
    }

    // ---- checkpointing ----

    public static TheoryData<string, string, double> GradientCases => new()
    {
        { "unet", "ddim", 1.0 },
        { "unet", "ddpm", 1.0 },       // stochastic steps: the variance noise is stored and replayed
        { "dit", "ddim", 1.0 },
        { "dit", "ddim", 3.0 },        // classifier-free guidance (batch of 2B per step)
    };

    [Theory]
    [MemberData(nameof(GradientCases))]
    public void Checkpointed_and_whole_graph_mask_gradients_agree(string which, string schedulerName, double guidance)
    {
        using var model = Build(which);
        // Logit 1: most gates are sampled strictly inside (0, 1), so every unit gets a reconstruction gradient.
        // beta 0: the comparison covers the trajectory gradient only (the regulariser's is the same code in both paths).
        var options = new EcoDiffOptions { InitialLogit = 1.0, Beta = 0, GuidanceScale = guidance, BatchSize = 2 };
        var checkpointed = MaskGradients(model, schedulerName, options with { Checkpointing = true }, steps: 4);
        var wholeGraph = MaskGradients(model, schedulerName, options with { Checkpointing = false }, steps: 4);

        double maxDiff = 0, maxAbs = 0;
        foreach (var (path, expected) in wholeGraph)
        {
            var actual = checkpointed[path];
            for (int i = 0; i < expected.Length; i++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(actual[i] - expected[i]));
                maxAbs = Math.Max(maxAbs, Math.Abs(expected[i]));
            }
        }
        int nonZero = wholeGraph.Values.Sum(v => v.Count(x => x != 0));
        int units = wholeGraph.Values.Sum(v => v.Length);
        double relative = maxDiff / maxAbs;
        output.WriteLine($"{which}/{schedulerName}/guidance {guidance}: {units} units ({nonZero} with a non-zero gradient), max |grad| {maxAbs:E3}, " +
                         $"max |checkpointed - whole graph| {maxDiff:E3}, relative {relative:E2}; parameters {model.ParameterCount()}");
        Assert.True(maxAbs > 1e-8, "all mask gradients are zero: the comparison proves nothing");
        Assert.True(nonZero > units / 2, $"only {nonZero} of {units} units have a gradient");
        Assert.True(relative < 1e-5, $"checkpointed vs whole-graph mask gradients differ by {relative:E2} (relative)");
    }

    [Fact]
    public void Objective_leaves_the_model_as_it_found_it()
    {
        using var model = TinyUNet(3);
        model.train();
        var before = model.parameters().Select(p => p.requires_grad).ToArray();
        var inputs = PruningTestSupport.Inputs(model, seed: 1);
        model.eval();
        using var original = PruningTestSupport.Run(model, inputs);
        model.train();
        using (var scheduler = Scheduler.FromFile(SchedulerConfigPath, "ddim"))
        using (var objective = new EcoDiffObjective(model, PrunableGroups.Of(model), scheduler, 2, 1, new EcoDiffOptions(), seed: 1))
        {
            Assert.All(model.parameters(), p => Assert.False(p.requires_grad));
            Assert.False(model.training);
            objective.Backward(0);
            Assert.All(model.parameters(), p => Assert.Null(p.grad));
        }
        Assert.Equal(before, model.parameters().Select(p => p.requires_grad).ToArray());
        Assert.True(model.training);
        model.eval();
        using var after = PruningTestSupport.Run(model, inputs);
        Assert.Equal(0.0, Fixtures.RelativeError(after, original)); // no gate left behind
    }

    [Fact]
    public void Multistep_samplers_are_rejected_with_a_reason()
    {
        using var model = TinyUNet(3);
        using var scheduler = Scheduler.FromFile(SchedulerConfigPath, "dpm++2m");
        var e = Assert.Throws<NotSupportedException>(() => new EcoDiffObjective(model, PrunableGroups.Of(model), scheduler, 2, 1, new EcoDiffOptions(), 1));
        Assert.Contains("ddim", e.Message);
    }

    // ---- gate math ----

    [Fact]
    public void Deterministic_gate_is_open_at_logit_3_and_closed_at_very_negative_logits()
    {
        using var open = new HardConcreteGate(4, initialLogit: 3);
        using var closed = new HardConcreteGate(4, initialLogit: -10);
        using var mid = new HardConcreteGate(1, initialLogit: 0);
        Assert.All(open.Deterministic().data<float>().ToArray(), g => Assert.Equal(1f, g));
        Assert.All(closed.Deterministic().data<float>().ToArray(), g => Assert.Equal(0f, g));
        Assert.Equal(0.5 * 1.2 - 0.1, mid.Deterministic().item<float>(), 6);
        using var sigmoid = new HardConcreteGate(1, initialLogit: 3, GateMode.Sigmoid);
        Assert.Equal(1 / (1 + Math.Exp(-3)), sigmoid.Deterministic().item<float>(), 6);
        Assert.Equal(1 / (1 + Math.Exp(-3)), sigmoid.Sample(null).item<float>(), 6);
    }

    [Fact]
    public void L0_expectation_is_the_sum_of_shifted_sigmoids()
    {
        using var gate = new HardConcreteGate(3);
        using (no_grad()) gate.Logits.copy_(tensor(new[] { -2f, 0.5f, 3f }));
        double shift = 0.83 * Math.Log(0.1 / 1.1);
        double expected = new[] { -2.0, 0.5, 3.0 }.Sum(l => 1 / (1 + Math.Exp(-(l - shift))));
        Assert.Equal(expected, gate.ExpectedL0().item<float>(), 5);
        Assert.Equal(expected, new[] { -2.0, 0.5, 3.0 }.Sum(l => HardConcreteGate.KeepProbability(l)), 10);
        Assert.Equal(5.5, gate.L1().item<float>(), 6);
        // The L0 gradient always pushes logits down (d/dlambda > 0 means gradient descent lowers lambda).
        gate.ExpectedL0().backward();
        Assert.All(gate.Logits.grad!.data<float>().ToArray(), g => Assert.True(g > 0));
    }

    [Fact]
    public void Hard_concrete_samples_are_reproducible_with_a_seed_and_lie_in_0_1()
    {
        using var gate = new HardConcreteGate(64, initialLogit: 0.5);
        float[] Draw(ulong seed)
        {
            using var generator = new Generator(seed);
            using var noGrad = no_grad();
            return gate.Sample(generator).data<float>().ToArray();
        }
        var a = Draw(5);
        Assert.Equal(a, Draw(5));
        Assert.NotEqual(a, Draw(6));
        Assert.All(a, g => Assert.InRange(g, 0f, 1f));
        Assert.Contains(a, g => g > 0 && g < 1);

        // Damped noise is bounded: logit 3 never samples below ~0.87, logit -3.5 always samples exactly 0.
        using var high = new HardConcreteGate(1000, initialLogit: 3);
        using var low = new HardConcreteGate(1000, initialLogit: -3.5);
        using var generator = new Generator(9);
        using var noGrad = no_grad();
        var highs = high.Sample(generator).data<float>().ToArray();
        Assert.True(highs.Min() > 0.86f, $"min gate at logit 3: {highs.Min()}");
        double belowOne = highs.Count(g => g < 1) / 1000.0;
        Assert.InRange(belowOne, 0.08, 0.18); // ~12.7% by the formula
        Assert.All(low.Sample(generator).data<float>().ToArray(), g => Assert.Equal(0f, g));
    }

    // ---- optimisation ----

    [Fact]
    public void Strong_regulariser_drives_the_expected_kept_fraction_down()
    {
        using var model = TinyDiT(11);
        var groups = PrunableGroups.Of(model);
        var pruner = new EcoDiffImportance(new EcoDiffOptions { Iterations = 6, Beta = 10, LearningRate = 1.0, BatchSize = 2, Seed = 3, ParameterWeighted = false });
        var context = new ImportanceContext(SchedulerConfigPath, Steps: 3, CalibrationSamples: 2, Seed: 0, Device: CPU);
        var scores = pruner.Score(model, groups, context);
        foreach (var r in pruner.History)
            output.WriteLine($"iteration {r.Iteration}: loss {r.Loss:F5} (rec {r.Reconstruction:E3}, R {r.Regularizer:F4}), kept {r.ExpectedKeptFraction:P2}, {r.Seconds:F3} s, peak {r.PeakResidentBytes / 1048576.0:F0} MB");
        Assert.Equal(6, pruner.History.Count);
        Assert.True(pruner.History[^1].ExpectedKeptFraction < pruner.History[0].ExpectedKeptFraction - 0.03);
        Assert.True(pruner.History[^1].Regularizer < 0.9 * pruner.History[0].Regularizer);
        Assert.Equal(groups.Units.Select(g => g.Path).Order(StringComparer.Ordinal), scores.ByGroup.Keys);
        // Most logits moved down from 3; the few the reconstruction needs may rise (that is the point of the method).
        var logits = scores.ByGroup.Values.SelectMany(v => v).ToArray();
        output.WriteLine($"logits: {logits.Count(s => s < 3f)} of {logits.Length} below 3, mean {logits.Average():F2}");
        Assert.True(logits.Count(s => s < 3f) > logits.Length * 3 / 4);
        Assert.True(logits.Average() < 2.5);

        // The scores binarise into a plan that the surgery applies with exactly the reported parameters removed.
        var selection = PlanSelector.Select(groups, scores, 0.2);
        using var pruned = StructuralSurgery.Apply(model, selection.Plan);
        Assert.Equal(selection.RemovedParameters, model.ParameterCount() - pruned.ParameterCount());
    }

    [Fact]
    public void Parameter_weighted_regulariser_is_the_expected_kept_share_of_prunable_parameters()
    {
        // Close one group completely (P(keep) ~ 0) and leave the rest open: R is then the parameter share of the open
        // groups, not their unit share — unless the weighting is switched off.
        using var model = TinyUNet(21);
        var groups = PrunableGroups.Of(model);
        using var scheduler = Scheduler.FromFile(SchedulerConfigPath, "ddim");
        foreach (bool weighted in new[] { true, false })
        {
            using var objective = new EcoDiffObjective(model, groups, scheduler, steps: 1, calibrationSamples: 1,
                new EcoDiffOptions { ParameterWeighted = weighted, InitialLogit = 30 }, seed: 1);
            var closed = objective.Gates.MaxBy(g => g.Group.ParametersPerUnit * g.Gate.Units);
            using (no_grad()) closed.Gate.Logits.fill_(-30);
            double units = objective.Gates.Sum(g => (double)g.Gate.Units);
            double parameters = objective.Gates.Sum(g => (double)g.Group.ParametersPerUnit * g.Gate.Units);
            double expected = weighted
                ? 1 - closed.Group.ParametersPerUnit * closed.Gate.Units / parameters
                : 1 - closed.Gate.Units / units;
            var loss = objective.Backward(0);
            output.WriteLine($"weighted {weighted}: R {loss.Regularizer:F6}, expected {expected:F6}");
            Assert.Equal(expected, loss.Regularizer, 5);
        }
    }

    [Fact]
    public void Beta_control_steers_the_expected_kept_fraction_to_the_target()
    {
        using var model = TinyDiT(13);
        var groups = PrunableGroups.Of(model);
        var context = new ImportanceContext(SchedulerConfigPath, Steps: 2, CalibrationSamples: 2, Seed: 0, Device: CPU);
        var options = new EcoDiffOptions { Iterations = 14, Beta = 0.01, LearningRate = 1.0, BatchSize = 2, Seed = 3, InitialLogit = 2 };
        var fixedBeta = new EcoDiffImportance(options);
        fixedBeta.Score(model, groups, context);
        var steered = new EcoDiffImportance(options with { TargetKeptFraction = 0.8 });
        steered.Score(model, groups, context);
        foreach (var (f, s) in fixedBeta.History.Zip(steered.History))
            output.WriteLine($"iteration {s.Iteration}: fixed kept {f.ExpectedKeptFraction:P1} (beta {f.Beta:G3}); steered kept {s.ExpectedKeptFraction:P1} (beta {s.Beta:G3})");
        Assert.All(fixedBeta.History, r => Assert.Equal(0.01, r.Beta));
        // Above the target the controller raises beta every iteration, and the kept fraction falls far faster than with
        // the fixed weak beta, ending near the target.
        Assert.True(steered.History[5].Beta > 10 * options.Beta, $"beta after 5 iterations: {steered.History[5].Beta}");
        Assert.True(steered.History[^1].ExpectedKeptFraction < fixedBeta.History[^1].ExpectedKeptFraction - 0.05);
        Assert.InRange(steered.History[^1].ExpectedKeptFraction, 0.65, 0.9);
    }

    [Fact]
    public void Reconstruction_loss_falls_when_nothing_but_fidelity_is_asked()
    {
        // Deterministic sigmoid gates starting half-closed: the only way down is opening them again.
        using var model = TinyUNet(12);
        var pruner = new EcoDiffImportance(new EcoDiffOptions
        {
            Iterations = 4, Beta = 0, LearningRate = 0.3, InitialLogit = 0, GateMode = GateMode.Sigmoid, BatchSize = 2, Seed = 1,
        });
        var context = new ImportanceContext(SchedulerConfigPath, Steps: 3, CalibrationSamples: 2, Seed: 0, Device: CPU);
        pruner.Score(model, PrunableGroups.Of(model), context);
        foreach (var r in pruner.History) output.WriteLine($"iteration {r.Iteration}: reconstruction {r.Reconstruction:E4}");
        Assert.True(pruner.History[^1].Reconstruction < 0.8 * pruner.History[0].Reconstruction);
    }

    // ---- plan selection ----

    private static UnitScores RandomScores(PrunableGroups groups, int seed)
    {
        var rng = new Random(seed);
        var scores = new UnitScores();
        foreach (var g in groups.Units) scores[g.Path] = Enumerable.Range(0, g.Units).Select(_ => (float)rng.NextDouble()).ToArray();
        return scores;
    }

    private static long StepParameters(UnitGroup g) => g.ParametersPerUnit * (g is ResnetChannelGroup r ? r.NormGroups : 1);

    public static TheoryData<string, SelectionScope, double> SelectionCases => new()
    {
        { "unet", SelectionScope.Global, 0.1 },
        { "unet", SelectionScope.Global, 0.3 },
        { "unet", SelectionScope.PerLayer, 0.2 },
        { "dit", SelectionScope.Global, 0.05 },
        { "dit", SelectionScope.PerLayer, 0.05 },
    };

    [Theory]
    [MemberData(nameof(SelectionCases))]
    public void Selector_hits_the_parameter_target_within_one_step_and_surgery_agrees(string which, SelectionScope scope, double target)
    {
        using DiffusionModel model = which == "unet" ? PruningTestSupport.TinyScaleShiftUNet(seed: 2) : TinyDiT(2);
        var groups = PrunableGroups.Of(model);
        var selection = PlanSelector.Select(groups, RandomScores(groups, 4), target, scope);
        long total = model.ParameterCount();
        long largestStep = groups.Units.Max(StepParameters);
        output.WriteLine($"{which} {scope} target {target:P1}: achieved {selection.AchievedRemovedFraction:P3} " +
                         $"({selection.RemovedParameters} of {total}; one step is at most {largestStep / (double)total:P3}); {selection.Plan.Keep.Count} groups narrowed");

        Assert.True(selection.AchievedRemovedFraction >= target);
        Assert.True(selection.RemovedParameters - target * total < largestStep, "overshoots by more than one removal step");
        selection.Plan.Validate(groups); // GroupNorm-even keep sets, indices in range
        foreach (var g in groups.Units)
        {
            int kept = selection.Plan.Keep.TryGetValue(g.Path, out var k) ? k.Length : g.Units;
            Assert.True(kept >= Math.Max(1, (int)Math.Ceiling(0.1 * g.Units)), $"{g.Path} keeps {kept} of {g.Units}");
        }
        if (scope == SelectionScope.PerLayer)
        {
            // the same fraction everywhere, up to one step of each group
            var fractions = groups.Units.Select(g => 1 - (selection.Plan.Keep.TryGetValue(g.Path, out var k) ? k.Length : g.Units) / (double)g.Units).ToList();
            double widestStep = groups.Units.Max(g => (g is ResnetChannelGroup r ? r.NormGroups : 1) / (double)g.Units);
            Assert.True(fractions.Max() - fractions.Min() <= widestStep + 1e-9, $"per-layer fractions {string.Join(", ", fractions.Select(f => f.ToString("F2")))}");
        }

        Assert.Equal(selection.RemovedParameters, StructuralSurgery.RemovedParameters(groups, selection.Plan));
        using var pruned = StructuralSurgery.Apply(model, selection.Plan);
        Assert.Equal(selection.RemovedParameters, total - pruned.ParameterCount());
        Assert.Equal(selection.Plan.ToJsonString(), PlanSelector.SelectForParameterTarget(groups, RandomScores(groups, 4), target, scope).ToJsonString());
    }

    [Fact]
    public void Global_selection_removes_the_lowest_scores_first()
    {
        using var model = TinyDiT(2);
        var groups = PrunableGroups.Of(model);
        var scores = RandomScores(groups, 1);
        var ff = groups.Units.OfType<FeedForwardGroup>().Single();
        scores[ff.Path] = scores[ff.Path].Select(s => s - 10f).ToArray(); // every neuron below every head
        // Small enough to be met by feed-forward neurons alone.
        double target = 10.0 * ff.ParametersPerUnit / model.ParameterCount();
        var plan = PlanSelector.SelectForParameterTarget(groups, scores, target);
        Assert.Equal([ff.Path], plan.Keep.Keys);
        var removed = Enumerable.Range(0, ff.Units).Except(plan.Keep[ff.Path]).ToArray();
        var lowest = Enumerable.Range(0, ff.Units).OrderBy(i => scores[ff.Path][i]).Take(removed.Length).Order().ToArray();
        Assert.Equal(lowest, removed);
    }

    [Fact]
    public void Per_layer_minimum_holds_when_one_group_has_far_lower_scores()
    {
        using var model = PruningTestSupport.TinyScaleShiftUNet(seed: 2);
        var groups = PrunableGroups.Of(model);
        var scores = RandomScores(groups, 3);
        var victim = groups.Units.OfType<ResnetChannelGroup>().First(g => g.Units >= 16);
        scores[victim.Path] = scores[victim.Path].Select(s => s - 100f).ToArray();
        var plan = PlanSelector.SelectForParameterTarget(groups, scores, 0.3, minKeepFraction: 0.5);
        int kept = plan.Keep[victim.Path].Length;
        output.WriteLine($"{victim.Path}: keeps {kept} of {victim.Units} ({victim.NormGroups} norm groups)");
        Assert.Equal(PlanSelector.MinimumKeep(victim, 0.5), kept);
        Assert.True(kept >= victim.Units / 2 && kept % victim.NormGroups == 0);
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(-0.1)]
    [InlineData(1.0)]
    [InlineData(1.5)]
    [InlineData(double.NaN)]
    public void Selector_rejects_targets_outside_0_1(double target)
    {
        using var model = TinyDiT(2);
        var groups = PrunableGroups.Of(model);
        var e = Assert.Throws<PruningPlanException>(() => PlanSelector.SelectForParameterTarget(groups, RandomScores(groups, 1), target));
        Assert.Contains("between 0 and 1", e.Message);
    }

    [Fact]
    public void Selector_names_the_maximum_reachable_fraction_for_a_target_beyond_the_structure()
    {
        using var model = PruningTestSupport.TinyScaleShiftUNet(seed: 2);
        var groups = PrunableGroups.Of(model);
        var e = Assert.Throws<PruningPlanException>(() => PlanSelector.SelectForParameterTarget(groups, RandomScores(groups, 1), 0.95));
        output.WriteLine(e.Message);
        Assert.Contains("at most", e.Message);
        Assert.Matches(@"\d+(\.\d+)?\s?%", e.Message);
    }
}
