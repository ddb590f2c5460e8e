using DiffusionPrune.Models.Layers;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Batch;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Importance;
using DiffusionPrune.Pruning.Layers;
using DiffusionPrune.Schedulers;
using DiffusionPrune.Tests.Cli;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>
/// Depth pruning: the families' layer candidates, LAPTOP's output loss and additivity check, LD-Pruner's latent shift,
/// the knapsack against brute force, the cost tables (latency cached beside the model) and the runner and CLI end to end.
/// </summary>
public class LayerPruningTests
{
    private static string SchedulerConfigPath => Fixtures.Diffusers("unet2d-small", "scheduler_config.json");

    /// <summary>Class-conditional DiT with six blocks (enough distinct layer subsets for the additivity check), 8 x 8.</summary>
    private static DiTTransformer2DModel SixBlockDiT(int seed) => DiT(seed, layers: 6, sampleSize: 8, patch: 4, classes: 5);

    /// <summary>An MNIST-shaped class-conditional DiT (1 x 32 x 32, patch 8, 10 classes) with four blocks.</summary>
    private static DiTTransformer2DModel MnistShapedDiT(int seed) => DiT(seed, layers: 4, sampleSize: 32, patch: 8, classes: 10);

    private static DiTTransformer2DModel DiT(int seed, int layers, int sampleSize, int patch, int classes)
    {
        manual_seed(seed);
        var model = new DiTTransformer2DModel(new DiTConfig
        {
            NumAttentionHeads = 2, AttentionHeadDim = 8, InChannels = 1, NumLayers = layers,
            SampleSize = sampleSize, PatchSize = patch, NumEmbedsAdaNorm = classes, NormNumGroups = 1,
        });
        using (no_grad())
            foreach (var p in model.parameters()) p.add_(randn(p.shape) * 0.1); // a fresh adaLN-Zero block is already the identity
        model.eval();
        return model;
    }

    private static ImportanceContext Context(long seed = 1, int steps = 3, int samples = 4) => new(SchedulerConfigPath, steps, samples, seed, CPU);

    // ---- candidates ----

    [Fact]
    public void The_UNet_family_offers_same_width_resnets_and_attention_blocks_and_says_why_not_the_others()
    {
        using var model = EcoDiffTests.TinyUNet(1);
        var candidates = ModelFamilies.Of(model).LayerCandidatesOf(model);
        Assert.Equal(
            ["down_blocks.0.resnets.0", "down_blocks.1.attentions.0", "mid_block.attentions.0", "mid_block.resnets.0", "mid_block.resnets.1",
             "up_blocks.0.attentions.0", "up_blocks.0.attentions.1"],
            candidates.Removable.Select(l => l.Path).Order(StringComparer.Ordinal));
        Assert.Contains("channels", candidates.NotRemovable["down_blocks.1.resnets.0"], StringComparison.Ordinal);
        Assert.All(candidates.Removable, l => Assert.Equal(LayerGroup.ParametersOf(l.Module), l.RemovedParameters));
        Assert.Equal(candidates.Removable.Select(l => l.Path), PrunableGroups.Of(model).Layers.Select(l => l.Path));
    }

    [Fact]
    public void The_DiT_family_offers_whole_blocks_and_block_0_keeps_the_embedding_the_output_layer_reads()
    {
        using var model = SixBlockDiT(2);
        var candidates = ModelFamilies.Of(model).LayerCandidatesOf(model);
        Assert.Equal(Enumerable.Range(0, 6).Select(i => $"transformer_blocks.{i}"), candidates.Removable.Select(l => l.Path));
        Assert.True(candidates.Removable[0].RemovedParameters < candidates.Removable[1].RemovedParameters);
        Assert.Contains("transformer block", candidates.NotRemovable["transformer_blocks.0.attn1"], StringComparison.Ordinal);
    }

    // ---- criteria ----

    [Fact]
    public void The_output_loss_is_zero_for_no_layer_and_a_gated_layer_samples_as_the_model_built_without_it()
    {
        using var model = SixBlockDiT(3);
        var groups = PrunableGroups.Of(model);
        using var scheduler = Scheduler.FromFile(SchedulerConfigPath, "ddim");
        using var calibration = new LayerCalibration(model, scheduler, steps: 3, samples: 4, seed: 5);
        Assert.Equal(0.0, calibration.OutputLoss([]));
        var layer = groups.Layer("transformer_blocks.2")!;
        double gated = calibration.OutputLoss([layer]);
        Assert.True(gated > 0);

        // The same loss from the physically smaller model on the full model's trajectory.
        var plan = new PruningPlan();
        plan.RemovedLayers.Add(layer.Path);
        using var smaller = StructuralSurgery.Apply(model, plan);
        using var scheduler2 = Scheduler.FromFile(SchedulerConfigPath, "ddim");
        using var smallerCalibration = new LayerCalibration(smaller, scheduler2, steps: 3, samples: 4, seed: 5);
        using var gatedFinal = calibration.FinalLatents([layer]);
        Assert.True(Fixtures.RelativeError(gatedFinal, smallerCalibration.Final) < 1e-5);
        Assert.All(groups.Layers, l => Assert.Null(GateOf(l)));
    }

    [Fact]
    public void Laptop_scores_every_layer_and_checks_additivity_on_at_least_20_distinct_subsets()
    {
        using var model = SixBlockDiT(4);
        var groups = PrunableGroups.Of(model);
        var scores = new LaptopCriterion().Score(model, groups, Context());
        Assert.Equal(groups.Layers.Select(l => l.Path).Order(StringComparer.Ordinal), scores.ByLayer.Keys);
        Assert.All(scores.ByLayer.Values, v => Assert.True(v > 0 && double.IsFinite(v)));
        var check = scores.Additivity!;
        Assert.Equal(20, check.Samples.Count);
        Assert.Equal(20, check.Samples.Select(s => string.Join(",", s.Layers)).Distinct().Count());
        Assert.All(check.Samples, s =>
        {
            Assert.InRange(s.Layers.Count, 2, 3);
            Assert.Equal(s.Layers.Sum(l => scores[l]), s.Predicted, 12);
        });
        Assert.InRange(check.PearsonR!.Value, -1, 1);
        Assert.InRange(check.SpearmanRho!.Value, -1, 1);
        Assert.All(groups.Layers, l => Assert.Null(GateOf(l))); // every gate cleared

        // Seeded: the same scores again.
        var again = new LaptopCriterion().Score(model, groups, Context());
        Assert.Equal(scores.ByLayer, again.ByLayer);
    }

    [Fact]
    public void LdPruner_scores_the_latent_shift_and_random_layer_is_seeded()
    {
        using var model = SixBlockDiT(5);
        var groups = PrunableGroups.Of(model);
        var shift = new LdPrunerCriterion().Score(model, groups, Context());
        Assert.All(shift.ByLayer.Values, v => Assert.True(v > 0 && double.IsFinite(v)));
        Assert.Equal(shift.ByLayer, new LdPrunerCriterion().Score(model, groups, Context()).ByLayer);

        var a = new RandomLayerCriterion().Score(model, groups, Context(seed: 7));
        Assert.Equal(a.ByLayer, new RandomLayerCriterion().Score(model, groups, Context(seed: 7)).ByLayer);
        Assert.NotEqual(a.ByLayer, new RandomLayerCriterion().Score(model, groups, Context(seed: 8)).ByLayer);
    }

    private static object? GateOf(LayerGroup layer) => layer.Module switch
    {
        DiTBlock block => block.LayerGate,
        ResnetBlock2D resnet => resnet.LayerGate,
        Attention attention => attention.LayerGate,
        _ => throw new InvalidOperationException(),
    };

    // ---- selection ----

    [Fact]
    public void The_knapsack_finds_the_least_score_that_meets_the_target_as_brute_force_does()
    {
        var random = new Random(11);
        for (int instance = 0; instance < 200; instance++)
        {
            int n = random.Next(1, 10);
            var items = Enumerable.Range(0, n).Select(i => new LayerItem($"l{i}", random.Next(0, 50), Math.Round(random.NextDouble(), 3))).ToList();
            double all = items.Sum(i => i.Saving);
            if (all == 0) continue;
            double needed = Math.Max(1, Math.Floor(all * random.NextDouble()));
            double best = double.PositiveInfinity;
            for (int mask = 0; mask < 1 << n; mask++)
            {
                var subset = items.Where((_, i) => (mask >> i & 1) == 1).ToList();
                if (subset.Sum(i => i.Saving) >= needed) best = Math.Min(best, subset.Sum(i => i.Score));
            }
            var choice = LayerSelector.Select(items, needed, LayerSelection.Knapsack);
            Assert.True(choice.Saving >= needed);
            Assert.Equal(best, choice.Score, 9);

            var greedy = LayerSelector.Select(items, needed, LayerSelection.Greedy);
            Assert.True(greedy.Saving >= needed);
            Assert.True(greedy.Score >= best - 1e-9);
        }
    }

    [Fact]
    public void Large_real_valued_savings_are_discretised_but_the_target_is_always_met()
    {
        // Flooring each saving to needed / Resolution loses at most n units, so the knapsack is at least as good as the
        // exact optimum for a target raised by (n + 1) units.
        var random = new Random(12);
        const int n = 12;
        for (int instance = 0; instance < 50; instance++)
        {
            var items = Enumerable.Range(0, n).Select(i => new LayerItem($"l{i}", random.NextDouble() * 3e6, random.NextDouble())).ToList();
            double needed = items.Sum(i => i.Saving) * (0.1 + 0.7 * random.NextDouble());
            var choice = LayerSelector.Select(items, needed, LayerSelection.Knapsack);
            Assert.True(choice.Saving >= needed, $"{choice.Saving} < {needed}");
            double raised = needed + (n + 1) * needed / LayerSelector.Resolution, best = double.PositiveInfinity;
            for (int mask = 0; mask < 1 << n; mask++)
            {
                var subset = items.Where((_, i) => (mask >> i & 1) == 1).ToList();
                if (subset.Sum(i => i.Saving) >= raised) best = Math.Min(best, subset.Sum(i => i.Score));
            }
            Assert.True(choice.Score <= best + 1e-9, $"{choice.Score} > {best}");
        }
    }

    [Fact]
    public void A_target_no_set_of_layers_reaches_is_refused_in_one_line()
    {
        var error = Assert.Throws<ArgumentException>(() => LayerSelector.Select([new("a", 3, 1), new("b", 4, 1)], 8, LayerSelection.Knapsack));
        Assert.Contains("saves 7", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Pearson_and_Spearman_agree_with_hand_values()
    {
        Assert.Equal(1.0, Statistics.PearsonR([1, 2, 3], [2, 4, 6])!.Value, 12);
        Assert.Equal(-1.0, Statistics.PearsonR([1, 2, 3], [3, 2, 1])!.Value, 12);
        Assert.Null(Statistics.PearsonR([1, 1, 1], [1, 2, 3]));
        Assert.Equal(1.0, Statistics.SpearmanRho([1, 2, 3, 4], [1, 4, 9, 100])!.Value, 12); // monotone, not linear
        // y's ranks are [1, 4, 2.5, 2.5]: a tie takes its mean rank.
        Assert.Equal(1.5 / Math.Sqrt(22.5), Statistics.SpearmanRho([1, 2, 3, 4], [1, 3, 2, 2])!.Value, 12);
    }

    // ---- costs ----

    [Fact]
    public void Mac_savings_are_what_the_smaller_model_no_longer_computes()
    {
        using var model = SixBlockDiT(6);
        var groups = PrunableGroups.Of(model);
        var macs = LayerCosts.Macs(groups);
        long full = ModelCost.Measure(model).Macs;
        Assert.Equal(full, macs.Total);
        var plan = new PruningPlan();
        plan.RemovedLayers.Add("transformer_blocks.1");
        using var smaller = StructuralSurgery.Apply(model, plan);
        Assert.Equal(full - ModelCost.Measure(smaller).Macs, macs.Saving["transformer_blocks.1"]);
    }

    [Fact]
    public void The_latency_table_is_measured_once_and_then_read_from_beside_the_model()
    {
        using var temp = Fixtures.Temp();
        using var model = SixBlockDiT(7);
        var groups = PrunableGroups.Of(model);
        var options = new LatencyOptions { WarmupRuns = 1, TimedRuns = 2 };
        var measured = LayerCosts.Latency(groups, temp.Path, batch: 2, options);
        Assert.Equal("measured", measured.Source);
        Assert.True(measured.Total > 0);
        Assert.All(measured.Saving.Values, v => Assert.True(v >= 0));
        Assert.True(File.Exists(Path.Combine(temp.Path, LayerCosts.LatencyFile)));

        var cached = LayerCosts.Latency(groups, temp.Path, batch: 2, options);
        Assert.Equal("cache", cached.Source);
        Assert.InRange(Math.Abs(measured.Total - cached.Total), 0, 1e-4); // stored to 4 decimals
        foreach (var (path, saving) in measured.Saving) Assert.InRange(Math.Abs(saving - cached.Saving[path]), 0, 2e-4);

        // Another batch is another table; a damaged file is measured again.
        Assert.Equal("measured", LayerCosts.Latency(groups, temp.Path, batch: 1, options).Source);
        File.WriteAllText(Path.Combine(temp.Path, LayerCosts.LatencyFile), "{ not json");
        Assert.Equal("measured", LayerCosts.Latency(groups, temp.Path, batch: 2, options).Source);
    }

    // ---- runner and CLI ----

    private static string SaveModel(TempFolder temp, DiffusionModel model, string name)
    {
        string folder = temp.File(name);
        DiffusersModelLoader.Save(model, folder);
        File.Copy(SchedulerConfigPath, Path.Combine(folder, ModelFolder.SchedulerConfig));
        return folder;
    }

    [Fact]
    public void A_laptop_prune_removes_whole_layers_and_reports_scores_savings_and_additivity()
    {
        using var temp = Fixtures.Temp();
        using var source = SixBlockDiT(8);
        string folder = SaveModel(temp, source, "dit");
        var report = PruneRunner.Run(new PruneRequest
        {
            ModelPath = folder, Method = "laptop", TargetParams = 0.3, OutputPath = temp.File("out"), Steps = 2, Calibration = 3,
        }, CPU);
        Assert.Equal("laptop", report.Method);
        Assert.True(report.AchievedParams >= 0.3);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(temp.File("out"), ModelFolder.PruneReport)))!.AsObject();
        var removed = json["removed_layers"]!.AsArray().Select(n => n!.GetValue<string>()).ToArray();
        Assert.Equal(2, removed.Length); // each block is a sixth of the parameters
        Assert.InRange(json["additivity_pearson_r"]!.GetValue<double>(), -1, 1);
        Assert.Equal(20, json["layer_selection"]!["additivity"]!.AsArray().Count);
        Assert.Equal("params", json["layer_selection"]!["budget"]!.GetValue<string>());
        Assert.Equal(removed, PruningPlan.Load(Path.Combine(temp.File("out"), ModelFolder.PrunePlan)).RemovedLayers);

        // The knapsack removed the two layers of least output loss (all savings but block 0's are equal and block 0 saves less).
        var scores = json["layer_selection"]!["layers"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!["score"]!.GetValue<double>());
        double best = scores.Keys.SelectMany(a => scores.Keys.Where(b => string.CompareOrdinal(a, b) < 0).Select(b => scores[a] + scores[b])).Min();
        Assert.Equal(best, removed.Sum(p => scores[p]), 12);

        using var pruned = ModelFamilies.Load(temp.File("out"));
        Assert.Equal(4, PrunableGroups.Of(pruned).Layers.Count);
        Assert.Equal(report.ParametersAfter, pruned.ParameterCount());
    }

    // ---- EcoDiff's logits as layer scores ----

    [Fact]
    public void EcoDiff_logits_become_layer_scores_the_removable_parameters_times_the_weighted_keep_probability()
    {
        using var model = SixBlockDiT(3);
        var groups = PrunableGroups.Of(model);
        var logits = new UnitScores();
        foreach (var group in groups.Units) logits[group.Path] = Enumerable.Repeat(10f, group.Units).ToArray();
        // block 0: every unit closed; block 1: heads open, FFN neurons half closed; block 2: no logits (not gated)
        foreach (var group in groups.Units.Where(g => g.IsWithin("transformer_blocks.0"))) logits[group.Path] = Enumerable.Repeat(-10f, group.Units).ToArray();
        var ffn1 = Assert.Single(groups.Units, g => g.IsWithin("transformer_blocks.1") && g is FeedForwardGroup);
        logits[ffn1.Path] = Enumerable.Range(0, ffn1.Units).Select(i => i % 2 == 0 ? -10f : 10f).ToArray();
        foreach (var group in groups.Units.Where(g => g.IsWithin("transformer_blocks.2"))) logits.ByGroup.Remove(group.Path);

        var scores = EcoDiffLayerCriterion.Aggregate(groups, logits);
        double open = HardConcreteGate.KeepProbability(10), closed = HardConcreteGate.KeepProbability(-10);
        LayerGroup Layer(int i) => groups.Layers.Single(l => l.Path == $"transformer_blocks.{i}");
        Assert.Equal(Layer(0).RemovedParameters * closed, scores["transformer_blocks.0"], 6);
        var units1 = groups.Units.Where(g => g.IsWithin("transformer_blocks.1")).ToArray();
        double total = units1.Sum(g => (double)g.ParametersPerUnit * g.Units);
        double kept = units1.Sum(g => g == ffn1
            ? g.ParametersPerUnit * (g.Units / 2 * closed + (g.Units - g.Units / 2) * open)
            : g.ParametersPerUnit * g.Units * open);
        Assert.Equal(Layer(1).RemovedParameters * kept / total, scores["transformer_blocks.1"], 6);
        Assert.Equal(Layer(2).RemovedParameters, scores["transformer_blocks.2"], 9);
        Assert.Equal(Layer(3).RemovedParameters * open, scores["transformer_blocks.3"], 6);
        Assert.True(scores["transformer_blocks.0"] < 1e-3 * Layer(0).RemovedParameters);

        // A logit count that does not match its group, or a NaN logit, is refused rather than scored.
        logits[ffn1.Path] = [1f];
        Assert.Throws<ArgumentException>(() => EcoDiffLayerCriterion.Aggregate(groups, logits));
        logits[ffn1.Path] = Enumerable.Repeat(float.NaN, ffn1.Units).ToArray();
        Assert.Throws<ArgumentException>(() => EcoDiffLayerCriterion.Aggregate(groups, logits));
    }

    [Fact]
    public void An_ecodiff_layer_prune_learns_masks_and_removes_the_layers_of_least_expected_kept_parameters()
    {
        using var temp = Fixtures.Temp();
        using var source = SixBlockDiT(8);
        string folder = SaveModel(temp, source, "dit");
        var iterations = new List<EcoDiffIterationReport>();
        var report = PruneRunner.Run(new PruneRequest
        {
            ModelPath = folder, Method = "ecodiff-layer", TargetParams = 0.3, OutputPath = temp.File("out"), Steps = 2, Calibration = 2, Iterations = 3,
            EcoDiff = new EcoDiffOptions { Beta = 0.5, BatchSize = 2 },
        }, CPU, onIteration: iterations.Add);
        Assert.Equal("ecodiff-layer", report.Method);
        Assert.Equal(3, iterations.Count);
        Assert.All(iterations, i => Assert.True(double.IsFinite(i.Loss)));
        Assert.True(report.AchievedParams >= 0.3);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(temp.File("out"), ModelFolder.PruneReport)))!.AsObject();
        Assert.Equal(0.5, json["settings"]!["beta"]!.GetValue<double>());
        Assert.Equal(3, json["settings"]!["iterations"]!.GetValue<int>());
        Assert.Equal("heads,ffn,channels", json["settings"]!["unit_types"]!.GetValue<string>());
        var removed = json["removed_layers"]!.AsArray().Select(n => n!.GetValue<string>()).ToArray();
        Assert.Equal(2, removed.Length);

        // Every score lies between 0 and the layer's size, and the knapsack removed the pair of least total score among
        // the pairs that meet the budget (block 0 saves less: it keeps the embedding the output layer reads).
        var groups = PrunableGroups.Of(source);
        var layers = json["layer_selection"]!["layers"]!.AsObject();
        var scores = layers.ToDictionary(kv => kv.Key, kv => kv.Value!["score"]!.GetValue<double>());
        var savings = layers.ToDictionary(kv => kv.Key, kv => kv.Value!["saving"]!.GetValue<double>());
        double needed = 0.3 * json["layer_selection"]!["total"]!.GetValue<double>();
        foreach (var layer in groups.Layers) Assert.InRange(scores[layer.Path], 0, layer.RemovedParameters);
        double best = scores.Keys.SelectMany(a => scores.Keys.Where(b => string.CompareOrdinal(a, b) < 0 && savings[a] + savings[b] >= needed)
            .Select(b => scores[a] + scores[b])).Min();
        Assert.Equal(best, removed.Sum(p => scores[p]), 9);
        Assert.False(Directory.Exists(EcoDiffCheckpoint.FolderFor(temp.File("out")))); // no checkpoints left beside the model
        using var pruned = ModelFamilies.Load(temp.File("out"));
        Assert.Equal(report.ParametersAfter, pruned.ParameterCount());
    }

    [Fact]
    public void Layer_targets_beyond_the_removable_layers_and_layer_options_on_width_methods_are_refused()
    {
        using var temp = Fixtures.Temp();
        using var source = EcoDiffTests.TinyUNet(9);
        string folder = SaveModel(temp, source, "unet");
        var error = Assert.Throws<ArgumentException>(() => PruneRunner.Run(new PruneRequest
        {
            ModelPath = folder, Method = "ldpruner", TargetParams = 0.9, OutputPath = temp.File("a"),
        }, CPU));
        Assert.Contains("removable layers", error.Message, StringComparison.Ordinal);
        Assert.Contains("width method", error.Message, StringComparison.Ordinal);

        error = Assert.Throws<ArgumentException>(() => PruneRunner.Run(new PruneRequest
        {
            ModelPath = folder, Method = "magnitude", TargetParams = 0.2, OutputPath = temp.File("b"), Budget = LayerBudget.Macs,
        }, CPU));
        Assert.Contains("--budget", error.Message, StringComparison.Ordinal);
        error = Assert.Throws<ArgumentException>(() => PruneRunner.Run(new PruneRequest
        {
            ModelPath = folder, Method = "laptop", TargetParams = 0.1, OutputPath = temp.File("c"), RoundTo = 8,
        }, CPU));
        Assert.Contains("--round-to", error.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(temp.File("a")));
    }

    [Fact]
    public void The_registry_lists_the_layer_methods_with_their_kind()
    {
        Assert.True(ImportanceCriteria.Find("laptop")!.RemovesLayers);
        Assert.True(ImportanceCriteria.Find("LDPRUNER")!.RemovesLayers);
        Assert.False(ImportanceCriteria.Find("taylor")!.RemovesLayers);
        Assert.IsType<RandomLayerCriterion>(ImportanceCriteria.CreateLayers("random-layer"));
        Assert.IsType<EcoDiffLayerCriterion>(ImportanceCriteria.CreateLayers("ecodiff-layer"));
        Assert.Equal(PruneWorkload.MaskLearning, ImportanceCriteria.Find("ecodiff-layer")!.Workload);
        Assert.Throws<ArgumentException>(() => ImportanceCriteria.Create("laptop"));
        Assert.Contains("random-layer", BatchPlan.KnownMethods);
    }

    [Fact]
    public void Dprune_prune_laptop_prints_the_removed_layers_and_the_additivity_r()
    {
        using var temp = Fixtures.Temp();
        string model = PruneCliTests.TinyModel(temp);
        var (code, stdout, stderr) = CliTests.Dprune("prune", "--model", model, "--method", "laptop", "--target-params", "0.05", "--budget", "macs",
            "--selection", "greedy", "--steps", "2", "--calibration", "2", "--additivity-subsets", "4", "--output", temp.File("out"));
        Assert.True(code == 0, stderr);
        Assert.Matches(@"removed \d+ layers? \(greedy, \d+\.\d % of the MACs\)", stdout);
        Assert.Contains("of the MACs):", stdout, StringComparison.Ordinal);
        Assert.Matches(@"additivity: Pearson r = -?[01]\.\d{3}, Spearman rho = -?[01]\.\d{3} over 4 random layer subsets", stdout);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(temp.File("out"), ModelFolder.PruneReport)))!;
        Assert.Null(json["target_removed_params"]);
        Assert.True(json["layer_selection"]!["achieved_fraction"]!.GetValue<double>() >= 0.05);

        (code, _, stderr) = CliTests.Dprune("prune", "--model", model, "--method", "laptop", "--target-params", "0.1", "--budget", "watts", "--output", temp.File("x"));
        Assert.Equal(2, code);
        Assert.Contains("--budget must be params, macs or latency", stderr, StringComparison.Ordinal);
    }

    // ---- learnable depth ----

    [Fact]
    public void Learnable_depth_ranges_over_exactly_the_minimal_layer_sets_that_meet_the_budget()
    {
        var random = new Random(21);
        for (int instance = 0; instance < 100; instance++)
        {
            int n = random.Next(1, 9);
            var savings = Enumerable.Range(0, n).Select(_ => (double)random.Next(0, 20)).ToArray();
            double needed = Math.Max(1, Math.Floor(savings.Sum() * random.NextDouble()));
            if (savings.Sum() < needed) continue;
            var expected = new List<string>();
            for (int mask = 1; mask < 1 << n; mask++)
            {
                var set = Enumerable.Range(0, n).Where(i => (mask >> i & 1) == 1).ToArray();
                bool meets(IEnumerable<int> s) => s.Sum(i => savings[i]) >= needed;
                if (meets(set) && set.All(drop => !meets(set.Where(i => i != drop)))) expected.Add(string.Join(",", set));
            }
            var sets = LearnableDepthCriterion.CandidateSets(savings, needed);
            Assert.Equal(expected.Order(StringComparer.Ordinal), sets.Select(s => string.Join(",", s)).Order(StringComparer.Ordinal));
        }
        Assert.Throws<ArgumentException>(() => LearnableDepthCriterion.CandidateSets([1, 1, 1, 1], 3, max: 3)); // C(4,3) = 4 > 3
    }

    [Fact]
    public void Learnable_depth_learns_a_set_that_meets_the_budget_leaves_the_model_alone_and_is_compared_with_one_shot()
    {
        using var temp = Fixtures.Temp();
        using var source = MnistShapedDiT(10);
        string folder = SaveModel(temp, source, "dit");
        using var model = ModelFamilies.Load(folder);
        var before = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var request = new PruneRequest { ModelPath = folder, Method = "learnable-depth", TargetParams = 0.4, Iterations = 6, Steps = 2, Calibration = 2, Seed = 3 };
        var log = new List<string>();
        using var pruned = PruneRunner.Prune(model, request, Path.Combine(folder, ModelFolder.SchedulerConfig), CPU, log.Add);
        var layers = pruned.Report.Layers!;
        Assert.Equal("learned", layers.SelectionName);
        Assert.True(layers.AchievedFraction >= 0.4);
        Assert.Equal(2, layers.Removed.Count); // each block is about a quarter
        Assert.Equal(layers.LearnedSets![0].Layers.Order(StringComparer.Ordinal), layers.Removed);
        Assert.Equal(2, layers.OneShotRemoved!.Count);
        Assert.InRange(layers.LearnedSets.Sum(s => s.Probability), 0, 1 + 1e-6);
        Assert.All(layers.Scores.Values, p => Assert.InRange(p, -1e-6, 1 + 1e-6)); // probabilities of being kept
        Assert.Contains(log, l => l.StartsWith("learnable-depth: 6/6 loss", StringComparison.Ordinal));
        var json = pruned.Report.ToJson();
        Assert.NotNull(json["layer_selection"]!["same_as_one_shot"]);
        Assert.Equal(6, json["settings"]!["iterations"]!.GetValue<int>());

        // The recovery update trained a copy: the model given is unchanged and ungated.
        foreach (var (key, value) in model.state_dict()) Assert.True(value.equal(before[key]).all().item<bool>(), key);
        Assert.All(PrunableGroups.Of(model).Layers, l => Assert.Null(GateOf(l)));

        // Seeded: the same run learns the same probabilities.
        using var again = PruneRunner.Prune(model, request, Path.Combine(folder, ModelFolder.SchedulerConfig), CPU);
        Assert.Equal(layers.Scores, again.Report.Layers!.Scores);
    }
}
