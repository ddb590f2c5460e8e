using System.Text.Json.Nodes;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Importance;
using DiffusionPrune.Schedulers;
using DiffusionPrune.Tests.Pipeline;
using DiffusionPrune.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>
/// taylor and learnable-depth on a Stable Diffusion pipeline (a copy of sd-pipeline-small): they calibrate on latents the
/// pipeline's own U-Net samples from the prompts (<see cref="TeacherSamples"/>), the denoising loss conditioned on each
/// latent's prompt states, and write a pipeline copy with the pruned unet/ that loads and samples.
/// </summary>
public class PipelineCalibrationPruningTests(ITestOutputHelper output)
{
    private static readonly string[] Prompts = ["a red cube on a table", "a lighthouse by the sea"];

    /// <summary>Two prompts, one latent each from two DDIM steps: the smallest calibration that still has two prompts.</summary>
    private static PruneRequest Request(string pipeline, string method, string outputPath) => new()
    {
        ModelPath = pipeline,
        Method = method,
        TargetParams = 0.2,
        OutputPath = outputPath,
        Iterations = 3,
        Steps = 2,
        Calibration = 2,
        Seed = 3,
        Prompts = Prompts,
        TeacherSamplesPerPrompt = 1,
        TeacherSampleSteps = 2,
        Taylor = new TaylorOptions { TimestepStride = 250 }, // 4 timesteps of 1000
    };

    /// <summary>The pipeline's U-Net samples one latent per prompt (DDIM 2 steps, guidance 7.5), as the runner does.</summary>
    private static TeacherSamples SampleLatents(DiffusionModel unet, string pipeline, IReadOnlyList<string> prompts, long seed = 3)
    {
        using var states = StableDiffusionPipeline.EncodePromptsOf(pipeline, prompts, classifierFreeGuidance: true);
        return TeacherSamples.Generate(unet, states, prompts, SchedulerConfig.Load(Path.Combine(pipeline, "scheduler", ModelFolder.SchedulerConfig)),
            samplesPerPrompt: 1, steps: 2, guidanceScale: 7.5, seed);
    }

    /// <summary>Taylor scores on <paramref name="latents"/> over four timesteps (stride 250), every unit's score in group order.</summary>
    private static float[] TaylorScores(DiffusionModel unet, TeacherSamples latents, string pipeline)
    {
        var groups = PrunableGroups.Of(unet);
        var context = new ImportanceContext(Path.Combine(pipeline, "scheduler", ModelFolder.SchedulerConfig), 2, latents.Count, 3, CPU, CalibrationData: latents);
        var scores = new TaylorImportance(new TaylorOptions { TimestepStride = 250 }).Score(unet, groups, context);
        return scores.ByGroup.Values.SelectMany(s => s).ToArray();
    }

    private static void AssertSamples(string pruned)
    {
        using var smaller = StableDiffusionPipeline.Load(pruned);
        using var image = smaller.Generate("a photograph of an astronaut riding a horse", null, 1, seed: 5, new SampleOptions(2, 7.5));
        Assert.Equal(new long[] { 1, 3, 32, 32 }, image.Image01.shape);
        Assert.True(isfinite(image.Image).all().item<bool>());
    }

    [Fact]
    public void Taylor_prunes_a_pipeline_on_its_own_samples_from_the_prompts_and_the_copy_loads_and_samples()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string pruned = temp.File("pruned");

        var report = PruneRunner.Run(Request(pipeline, "taylor", pruned), CPU, output.WriteLine);

        Assert.Equal("taylor", report.Method);
        Assert.InRange(report.AchievedParams, 0.15, 0.25);
        var settings = JsonNode.Parse(File.ReadAllText(Path.Combine(pruned, ModelFolder.PruneReport)))!["settings"]!;
        Assert.Equal(Prompts, settings["prompts"]!.AsArray().Select(p => (string)p!).ToArray());
        Assert.Equal("request", (string?)settings["prompt_source"]);
        var data = settings["data"]!;
        Assert.Equal("teacher_samples", (string?)data["kind"]);
        Assert.Equal(1, (int)data["samples_per_prompt"]!);
        Assert.Equal(2, (int)data["sampler_steps"]!);
        Assert.Equal(7.5, (double)data["guidance_scale"]!);
        Assert.Equal(2, (int)data["count"]!);
        Assert.Equal("unet", (string?)settings["pipeline_component"]);
        Assert.Equal(250, (int)settings["timestep_stride"]!);
        Assert.InRange((int)settings["timesteps_accumulated"]!, 1, 4);
        Assert.True(File.Exists(Path.Combine(pruned, ModelFolder.PipelineIndex)));
        using (var unet = ModelFamilies.Load(pruned)) Assert.Equal(report.ParametersAfter, unet.ParameterCount());
        AssertSamples(pruned);
    }

    [Fact]
    public void Learnable_depth_prunes_whole_layers_of_a_pipeline_on_its_own_samples_and_the_copy_loads_and_samples()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string pruned = temp.File("pruned");

        var report = PruneRunner.Run(Request(pipeline, "learnable-depth", pruned), CPU, output.WriteLine);

        var layers = report.Layers!;
        Assert.NotEmpty(layers.Removed);
        Assert.NotNull(layers.LearnedSets);
        Assert.Equal(layers.Removed.Order(StringComparer.Ordinal), layers.LearnedSets![0].Layers.Order(StringComparer.Ordinal));
        Assert.True(report.AchievedParams >= 0.2, $"removed {report.AchievedParams:P1}");
        // Each layer's score is its probability of being kept: in [0, 1], and below 1 for the removed ones (the chosen set has weight).
        Assert.All(layers.Scores.Values, p => Assert.InRange(p, 0.0, 1.0));
        Assert.All(layers.Removed, l => Assert.True(layers.Scores[l] < 1 - 1e-6, $"{l}: {layers.Scores[l]}"));
        Assert.InRange(layers.LearnedSets[0].Probability, 1e-6, 1.0);
        output.WriteLine($"learnable-depth: removed {string.Join(", ", layers.Removed)}");
        Assert.NotNull(layers.OneShotRemoved);
        Assert.True(double.IsFinite((double)report.Settings["final_loss"]!) && (double)report.Settings["final_loss"]! > 0);
        Assert.Equal("teacher_samples", (string?)report.Settings["data"]!["kind"]);
        Assert.Equal(Prompts, report.Settings["prompts"]!.AsArray().Select(p => (string)p!).ToArray());

        using (var smaller = StableDiffusionPipeline.Load(pruned))
        {
            Assert.Equal(report.ParametersAfter, smaller.Unet.ParameterCount());
            Assert.Equal(layers.Removed.Order(StringComparer.Ordinal), smaller.Unet.Structure.RemovedLayers);
        }
        AssertSamples(pruned);
    }

    [Fact]
    public void Taylor_scores_on_a_pipelines_samples_are_finite_spread_and_not_magnitudes()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        using var unet = ModelFamilies.Load(pipeline);
        using var latents = SampleLatents(unet, pipeline, Prompts);
        Assert.True(isfinite(latents.Images([0, 1])).all().item<bool>());

        var taylor = TaylorScores(unet, latents, pipeline);
        var magnitude = new MagnitudeImportance().Score(unet, PrunableGroups.Of(unet), null!).ByGroup.Values.SelectMany(s => s).ToArray();

        Assert.All(taylor, s => Assert.True(float.IsFinite(s) && s >= 0, $"score {s}"));
        Assert.True(taylor.Count(s => s > 0) > taylor.Length * 0.9, "most units have a gradient");
        Assert.True(taylor.Distinct().Count() > taylor.Length / 2, "scores are spread, not a constant");
        Assert.Equal(magnitude.Length, taylor.Length);
        // Not a rescaled magnitude: the orders differ (rank correlation well below 1).
        double rho = Spearman(taylor, magnitude);
        output.WriteLine($"Spearman(taylor, magnitude) = {rho:F3} over {taylor.Length} units");
        Assert.True(rho < 0.9, $"rho {rho}");
        // Deterministic: the same seed scores the same.
        Assert.Equal(taylor, TaylorScores(unet, latents, pipeline));
    }

    [Fact]
    public void Taylor_scores_depend_on_the_prompt_states_the_latents_are_paired_with()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        using var unet = ModelFamilies.Load(pipeline);
        using var latents = SampleLatents(unet, pipeline, Prompts);
        var paired = TaylorScores(unet, latents, pipeline);

        // The same latents, each now paired with the other prompt's states: only the conditioning changes.
        using (var swapped = latents.TextStates.index_select(0, tensor(new long[] { 1, 0, 2 })))
            latents.TextStates.copy_(swapped);
        var swappedScores = TaylorScores(unet, latents, pipeline);

        double largest = paired.Zip(swappedScores, (a, b) => Math.Abs(a - b) / Math.Max(1e-12, Math.Abs(a))).Max();
        output.WriteLine($"largest relative change of a unit's score when the prompts are swapped: {largest:E2}");
        Assert.True(largest > 1e-3, $"largest relative change {largest}");

        // And other prompts make other latents and other scores.
        using var others = SampleLatents(unet, pipeline, ["a bowl of fruit", "a snowy mountain"]);
        Assert.NotEqual(paired, TaylorScores(unet, others, pipeline));
    }

    [Fact]
    public void Calibration_data_and_sampling_options_are_refused_where_nothing_reads_them_and_nothing_is_written()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);

        var withData = Request(pipeline, "taylor", temp.File("a")) with { Data = "mnist" };
        Assert.Contains("--data is for image models; a Stable Diffusion pipeline's U-Net calibrates on latents, which taylor samples with the pipeline itself",
            Assert.Throws<ArgumentException>(() => PruneRunner.Run(withData, CPU)).Message);
        var dataOnMagnitude = Request(pipeline, "magnitude", temp.File("b")) with { Data = "mnist", Prompts = null, TeacherSamplesPerPrompt = null, TeacherSampleSteps = null };
        Assert.Contains("--data is for image models", Assert.Throws<ArgumentException>(() => PruneRunner.Run(dataOnMagnitude, CPU)).Message);

        var samplingForMagnitude = Request(pipeline, "magnitude", temp.File("c")) with { Prompts = null };
        Assert.Contains("magnitude on '", Assert.Throws<ArgumentException>(() => PruneRunner.Run(samplingForMagnitude, CPU)).Message);
        var samplingForImageModel = new PruneRequest
        {
            ModelPath = PruningTestSupport.UNetFixture, Method = "taylor", TargetParams = 0.2, OutputPath = temp.File("d"), TeacherGuidanceScale = 5,
            SchedulerConfigPath = Path.Combine(pipeline, "scheduler", ModelFolder.SchedulerConfig),
        };
        Assert.Contains("--teacher-samples, --teacher-steps and --teacher-guidance set the latents a Stable Diffusion pipeline samples",
            Assert.Throws<ArgumentException>(() => PruneRunner.Run(samplingForImageModel, CPU)).Message);

        var tooFew = Request(pipeline, "taylor", temp.File("e")) with { Calibration = 5 };
        Assert.Contains("raise --teacher-samples to 3 or lower --calibration", Assert.Throws<ArgumentException>(() => PruneRunner.Run(tooFew, CPU)).Message);
        var badSteps = Request(pipeline, "learnable-depth", temp.File("f")) with { TeacherSampleSteps = 0 };
        Assert.Contains("--teacher-steps must be at least 1", Assert.Throws<ArgumentException>(() => PruneRunner.Run(badSteps, CPU)).Message);

        var unetAlone = new PruneRequest
        {
            ModelPath = Path.Combine(pipeline, "unet"), Method = "taylor", TargetParams = 0.2, OutputPath = temp.File("g"),
            SchedulerConfigPath = Path.Combine(pipeline, "scheduler", ModelFolder.SchedulerConfig),
        };
        Assert.Contains("give the Stable Diffusion pipeline folder", Assert.Throws<ArgumentException>(() => PruneRunner.Run(unetAlone, CPU)).Message);

        foreach (var name in new[] { "a", "b", "c", "d", "e", "f", "g" }) Assert.False(Directory.Exists(temp.File(name)), name);
    }

    /// <summary>Spearman's rank correlation (average ranks for ties).</summary>
    private static double Spearman(IReadOnlyList<float> a, IReadOnlyList<float> b)
    {
        static double[] Ranks(IReadOnlyList<float> v)
        {
            var order = Enumerable.Range(0, v.Count).OrderBy(i => v[i]).ToArray();
            var ranks = new double[v.Count];
            for (int i = 0; i < order.Length;)
            {
                int j = i;
                while (j + 1 < order.Length && v[order[j + 1]] == v[order[i]]) j++;
                for (int k = i; k <= j; k++) ranks[order[k]] = (i + j) / 2.0;
                i = j + 1;
            }
            return ranks;
        }
        double[] ra = Ranks(a), rb = Ranks(b);
        double ma = ra.Average(), mb = rb.Average();
        double cov = ra.Zip(rb, (x, y) => (x - ma) * (y - mb)).Sum();
        return cov / Math.Sqrt(ra.Sum(x => (x - ma) * (x - ma)) * rb.Sum(y => (y - mb) * (y - mb)));
    }
}
