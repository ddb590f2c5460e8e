using DiffusionPrune.Data;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Metrics;
using DiffusionPrune.Models;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Evaluation;

/// <summary>
/// The properties that make the FID-proxy believable: the committed feature network classifies well,
/// real-vs-real distance is near zero and far below any generated set, an untrained model scores terribly.
/// </summary>
public class EvaluationSanityTests
{
    private static readonly Lazy<MnistDataset> Data = new(() => MnistDataset.Load());
    private static readonly Lazy<FeatureNet> Net = new(() => FeatureNet.Load());

    [Fact]
    public void Committed_feature_network_classifies_the_test_split_at_98_percent_or_better()
    {
        double accuracy = FeatureNetTrainer.TestAccuracy(Net.Value, Data.Value);
        Assert.True(accuracy >= 0.98, $"test accuracy {accuracy:P2}");
    }

    [Fact]
    public void Cached_reference_statistics_are_those_of_the_real_test_split()
    {
        using var scope = NewDisposeScope();
        var cached = GaussianStats.Load(Path.Combine(FeatureNet.DefaultFolder()!, FeatureNet.ReferenceStatsName));
        var fresh = GaussianStats.FromFeatures(Net.Value.FeaturesOf(Data.Value.Test.All()).to_type(ScalarType.Float64));
        Assert.Equal(2000, cached.SampleCount);
        Assert.True(FrechetDistance.Compute(cached, fresh) < 1e-6);
    }

    [Fact]
    public void Real_train_versus_real_test_is_near_zero_and_far_below_an_untrained_model()
    {
        using var scope = NewDisposeScope();
        var testStats = GaussianStats.Load(Path.Combine(FeatureNet.DefaultFolder()!, FeatureNet.ReferenceStatsName));
        const int n = 500;
        var trainImages = Data.Value.Train.Images(Enumerable.Range(0, n).Select(i => i * 16).ToArray());
        double realVsReal = FrechetDistance.Compute(testStats, GaussianStats.FromFeatures(Net.Value.FeaturesOf(trainImages).to_type(ScalarType.Float64)));

        // An untrained U-Net of the default's shape, sampled exactly as the evaluator does.
        manual_seed(0);
        using var untrained = ModelFamilies.Create(ConfigJson.Load(Path.Combine(Fixtures.RepoRoot, "samples", "configs", "mnist-unet.json")));
        untrained.eval();
        using var scheduler = Scheduler.Create(SchedulerConfig.Parse(DiffusionPrune.Formats.ModelFolder.DefaultSchedule), "ddim");
        var noise = randn([n, 1, 32, 32], generator: new Generator(1));
        var generated = DiffusionSampler.Sample(untrained, scheduler, noise, null, new SampleOptions(4)).Final;
        double untrainedScore = FrechetDistance.Compute(testStats, GaussianStats.FromFeatures(Net.Value.FeaturesOf(generated.clamp(-1, 1)).to_type(ScalarType.Float64)));

        // Pure noise images, the crudest "generator".
        double noiseScore = FrechetDistance.Compute(testStats, GaussianStats.FromFeatures(Net.Value.FeaturesOf(randn([n, 1, 32, 32], generator: new Generator(2)).clamp(-1, 1)).to_type(ScalarType.Float64)));

        Assert.True(realVsReal < 0.1 * untrainedScore, $"real/real {realVsReal:F3} vs untrained {untrainedScore:F3}");
        Assert.True(realVsReal < 0.1 * noiseScore, $"real/real {realVsReal:F3} vs noise {noiseScore:F3}");
    }

    [Theory]
    [InlineData("mnist-unet")]
    [InlineData("mnist-dit")]
    public void A_trained_default_scores_far_better_than_an_untrained_model_of_its_shape(string name)
    {
        using var scope = NewDisposeScope();
        var testStats = GaussianStats.Load(Path.Combine(FeatureNet.DefaultFolder()!, FeatureNet.ReferenceStatsName));
        string folder = Path.Combine(Fixtures.RepoRoot, "samples", "models", name);
        const int n = 300;
        double Score(DiffusionModel model)
        {
            using var scheduler = Scheduler.FromFile(Path.Combine(folder, "scheduler_config.json"), "ddim");
            var noise = randn([n, 1, 32, 32], generator: new Generator(5));
            var labels = model.NumClasses is int classes ? DiffusionSampler.CyclicLabels(n, classes) : null;
            var images = DiffusionSampler.Sample(model, scheduler, noise, labels, new SampleOptions(10)).Final.clamp(-1, 1);
            return FrechetDistance.Compute(testStats, GaussianStats.FromFeatures(Net.Value.FeaturesOf(images).to_type(ScalarType.Float64)));
        }
        using var trained = ModelFamilies.Load(folder);
        manual_seed(0);
        using var untrained = ModelFamilies.Create(ConfigJson.Load(Path.Combine(folder, "config.json")));
        untrained.eval();
        double trainedScore = Score(trained), untrainedScore = Score(untrained);
        Assert.True(trainedScore < 0.25 * untrainedScore, $"trained {trainedScore:F2} vs untrained {untrainedScore:F2}");
    }

    /// <summary>
    /// Issue 3: class-conditional DiT samples must be classified as the requested digit at least 90% of the time
    /// (guidance 3, the model's own scheduler config, 200 samples with labels cycling 0-9). 25 steps guards the
    /// scheduler config too: with diffusers' default x0 clipping, guided DDIM drifts with every step.
    /// </summary>
    [Theory]
    [InlineData(10)]
    [InlineData(25)]
    public void The_DiT_default_draws_the_requested_digit_at_least_90_percent_of_the_time(int steps)
    {
        using var scope = NewDisposeScope();
        string folder = Path.Combine(Fixtures.RepoRoot, "samples", "models", "mnist-dit");
        using var model = ModelFamilies.Load(folder);
        using var scheduler = Scheduler.FromFile(Path.Combine(folder, "scheduler_config.json"), "ddim");
        const int n = 200;
        var labels = DiffusionSampler.CyclicLabels(n, 10);
        var noise = randn([n, 1, 32, 32], generator: new Generator(11));
        var images = DiffusionSampler.Sample(model, scheduler, noise, labels, new SampleOptions(steps, GuidanceScale: 3)).Final.clamp(-1, 1);
        double accuracy = ClassifierAccuracy.Compute(Net.Value.LogitsOf(images), labels);
        Assert.True(accuracy >= 0.9, $"class accuracy {accuracy:P1} at guidance 3, {steps} DDIM steps");
    }
}
