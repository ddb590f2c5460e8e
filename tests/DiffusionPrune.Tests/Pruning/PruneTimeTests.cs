using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Pruning;
using Xunit;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

public class PruneTimeTests
{
    /// <summary>
    /// The passes a real run makes, counted where every pass goes through: the first block's feature tap, by batch size
    /// and by whether gradients were recorded (a pass with a backward) or not.
    /// </summary>
    private static Dictionary<(long Batch, bool Backward), long> CountPasses(string folder, PruneRequest request)
    {
        using var model = ModelFamilies.Load(folder);
        var counts = new Dictionary<(long, bool), long>();
        model.FeatureTap = (block, output) =>
        {
            if (block != "down_blocks.0") return;
            var key = (output.shape[0], is_grad_enabled());
            counts[key] = counts.GetValueOrDefault(key) + 1;
        };
        using var pruned = PruneRunner.Prune(model, request, Path.Combine(folder, ModelFolder.SchedulerConfig), CPU);
        // ModelCost.Measure traces one pass at batch 1 for the MACs: part of the fixed overhead, not the method's work
        Assert.Equal(1, counts[(1, false)]);
        counts.Remove((1, false));
        return counts;
    }

    private static Dictionary<(long Batch, bool Backward), long> Expected(string folder, PruneRequest request)
    {
        using var model = ModelFamilies.Load(folder);
        var expected = new Dictionary<(long, bool), long>();
        foreach (var w in PruneTime.Work(model, request))
        {
            if (w.Forwards > 0) expected[(w.Batch, false)] = expected.GetValueOrDefault((w.Batch, false)) + w.Forwards;
            if (w.Backwards > 0) expected[(w.Batch, true)] = expected.GetValueOrDefault((w.Batch, true)) + w.Backwards;
        }
        return expected;
    }

    [Theory]
    [InlineData("ecodiff")]
    [InlineData("ecodiff-layer")]
    [InlineData("laptop")]
    [InlineData("ldpruner")]
    [InlineData("learnable-depth")]
    [InlineData("magnitude")]
    [InlineData("random")]
    [InlineData("random-layer")]
    public void The_passes_counted_before_a_run_are_the_passes_the_run_makes(string method)
    {
        using var temp = Fixtures.Temp();
        string folder = Fixtures.TinyEvaluableUNet(temp);
        var request = new PruneRequest
        {
            ModelPath = folder, Method = method, TargetParams = 0.3, Steps = 2, Iterations = 3, Calibration = 6, Seed = 1, AdditivitySubsets = 3,
        };
        var expected = Expected(folder, request);
        var counted = CountPasses(folder, request);
        if (method == "learnable-depth")
        {
            // its updates train a copy of the model (whose passes the tap does not see): one per iteration at batch 16
            Assert.Equal(3, expected[(16, true)]);
            expected.Remove((16, true));
        }
        Assert.Equal(expected.OrderBy(kv => kv.Key), counted.OrderBy(kv => kv.Key));
        if (method is "magnitude" or "random" or "random-layer") Assert.Empty(expected);
        else Assert.NotEmpty(expected);
    }

    [Fact]
    public void Taylor_makes_at_most_the_passes_counted_one_backward_per_timestep_and_micro_batch()
    {
        using var temp = Fixtures.Temp();
        string folder = Fixtures.TinyEvaluableUNet(temp);
        var request = new PruneRequest { ModelPath = folder, Method = "taylor", TargetParams = 0.3, Calibration = 5, Seed = 1 };
        var expected = Expected(folder, request);
        var counted = CountPasses(folder, request);
        var (key, passes) = Assert.Single(expected);
        Assert.Equal((5L, true), key);
        Assert.Equal(20, passes); // timesteps 0, 50, ..., 950 of the 1000 the scheduler trains on, one micro-batch of 5
        var (countedKey, countedPasses) = Assert.Single(counted);
        Assert.Equal(key, countedKey);
        Assert.InRange(countedPasses, 1, passes); // the informative-timestep rule may stop early
    }

    [Fact]
    public void EcoDiff_counts_its_targets_once_and_each_iteration_twice_with_guidance_doubling_the_batch()
    {
        using var temp = Fixtures.Temp();
        string folder = Fixtures.TinyEvaluableUNet(temp);
        using var model = ModelFamilies.Load(folder);
        var request = new PruneRequest { ModelPath = folder, Method = "ecodiff", TargetParams = 0.2, Steps = 5, Iterations = 7, Calibration = 10 };
        var work = PruneTime.Work(model, request);
        Assert.Equal(2, work.Count);
        // batches of 4, 4 and 2 (the EcoDiff batch is 4 by default); iterations 1..7 take batches 0, 1, 2, 0, 1, 2, 0
        Assert.Equal((4, 5L * (2 + 5), 5L * 5), (work[0].Batch, work[0].Forwards, work[0].Backwards));
        Assert.Equal((2, 5L * (1 + 2), 5L * 2), (work[1].Batch, work[1].Forwards, work[1].Backwards));
        // an unconditional model has no null class: guidance does not apply
        Assert.Equal(work, PruneTime.Work(model, request with { GuidanceIfConditional = 3 }));
    }

    [Fact]
    public void A_pass_is_timed_without_leaving_gradients_or_changing_the_mode_and_the_estimate_adds_them_up()
    {
        using var temp = Fixtures.Temp();
        string folder = Fixtures.TinyEvaluableUNet(temp);
        using var model = ModelFamilies.Load(folder);
        model.train();
        var times = PruneTime.Measure(model, new PassKind(3, Backward: true, WeightGradients: true), runs: 2);
        Assert.Equal(3, times.Batch);
        Assert.True(times.ForwardMilliseconds > 0 && double.IsFinite(times.ForwardMilliseconds));
        Assert.True(times.BackwardMilliseconds > 0 && double.IsFinite(times.BackwardMilliseconds));
        Assert.True(model.training);
        Assert.All(model.parameters(), p => Assert.True(p.grad is null || p.grad.abs().sum().item<float>() == 0));
        Assert.True(double.IsNaN(PruneTime.Measure(model, new PassKind(2, Backward: false, WeightGradients: false), runs: 1).BackwardMilliseconds));
        var toActivations = PruneTime.Measure(model, new PassKind(3, Backward: true, WeightGradients: false), runs: 2);
        Assert.True(toActivations.BackwardMilliseconds > 0);
        Assert.All(model.parameters(), p => Assert.True(p.requires_grad)); // restored
        Assert.All(model.parameters(), p => Assert.True(p.grad is null || p.grad.abs().sum().item<float>() == 0));

        var request = new PruneRequest { ModelPath = folder, Method = "ecodiff", TargetParams = 0.2, Steps = 2, Iterations = 10, Calibration = 4 };
        var estimate = PruneTime.Estimate(model, request, kind => new PassTimes(kind.Batch, 10, 30));
        // 2 x (1 + 10) forwards at 10 ms, 2 x 10 forward+backward at 30 ms, and the fixed overhead
        Assert.Equal(PruneTime.Overhead + TimeSpan.FromMilliseconds(22 * 10 + 20 * 30), estimate.Total);
        Assert.Contains("22 forward passes at batch 4 (10.0 ms each)", estimate.Describe());
        Assert.Contains("20 forward+backward (to the activations) at batch 4 (30.0 ms each)", estimate.Describe());
        var weightsOnly = PruneTime.Estimate(model, request with { Method = "magnitude" }, _ => throw new InvalidOperationException("no pass to time"));
        Assert.Equal(PruneTime.Overhead, weightsOnly.Total);
        Assert.Contains("weights only", weightsOnly.Describe());
    }

    [Theory]
    [InlineData(0.4, "1 s")]
    [InlineData(42.4, "42 s")]
    [InlineData(200, "3 min 20 s")]
    [InlineData(3900, "1 h 05 min")]
    public void Durations_read_as_people_say_them(double seconds, string expected) =>
        Assert.Equal(expected, PruneTime.Format(TimeSpan.FromSeconds(seconds)));
}
