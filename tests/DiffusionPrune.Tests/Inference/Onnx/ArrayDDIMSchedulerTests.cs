using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Inference.Onnx;

/// <summary>The float-array DDIM of the on-device demo against our TorchSharp DDIMScheduler (itself checked against diffusers).</summary>
public class ArrayDDIMSchedulerTests
{
    public static TheoryData<string, string, int, double> Configs => new()
    {
        { "DDIM defaults", """{"_class_name": "DDIMScheduler"}""", 10, 0.0 },
        { "leading + steps_offset, ᾱ_0 at the end", """{"_class_name": "DDIMScheduler", "steps_offset": 1, "set_alpha_to_one": false, "clip_sample": false}""", 25, 0.0 },
        { "scaled_linear, trailing, v_prediction", """{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing", "prediction_type": "v_prediction", "clip_sample": false}""", 7, 0.0 },
        { "cosine, linspace, sample prediction, clip 0.5", """{"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "prediction_type": "sample", "clip_sample_range": 0.5}""", 12, 0.0 },
        { "zero terminal SNR", """{"_class_name": "DDIMScheduler", "rescale_betas_zero_snr": true, "timestep_spacing": "trailing", "prediction_type": "v_prediction", "clip_sample": false}""", 5, 0.0 },
        { "a DDPM config sampled with DDIM", """{"_class_name": "DDPMScheduler", "variance_type": "fixed_small", "num_train_timesteps": 500, "beta_end": 0.03, "clip_sample": true}""", 10, 0.0 },
        { "trained betas", """{"_class_name": "DDIMScheduler", "num_train_timesteps": 6, "trained_betas": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4], "clip_sample": false}""", 3, 0.0 },
        { "eta 0.7 with given noise", """{"_class_name": "DDIMScheduler", "clip_sample": false}""", 10, 0.7 },
        { "one step", """{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}""", 1, 0.0 },
    };

    [Theory]
    [MemberData(nameof(Configs))]
    public void Matches_the_TorchSharp_DDIMScheduler_to_1e5(string name, string json, int steps, double eta)
    {
        using var expected = Scheduler.Create(SchedulerConfig.Parse(json), "ddim", eta);
        var actual = new ArrayDDIMScheduler(ArrayDDIMScheduler.ParseConfig(json), eta);
        AssertSameTrajectory(name, expected, actual, steps);
    }

    [Fact]
    public void Reads_the_fixture_scheduler_config_as_the_TorchSharp_scheduler_does()
    {
        string path = Fixtures.Diffusers("unet2d-small", "scheduler_config.json");
        using var expected = Scheduler.FromFile(path, "ddim");
        AssertSameTrajectory("fixture", expected, ArrayDDIMScheduler.FromFile(path), 10);
    }

    [Fact]
    public void Bare_infinity_in_a_dpm_solver_config_does_not_stop_ddim_from_reading_it()
    {
        var config = ArrayDDIMScheduler.ParseConfig("""{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "beta_end": 0.012}""");
        Assert.Equal(0.012, config.BetaEnd);
        Assert.Equal("leading", config.TimestepSpacing);
    }

    [Fact]
    public void Unsupported_settings_are_refused_with_the_key_named()
    {
        Assert.Contains("thresholding", Assert.Throws<NotSupportedException>(() => ArrayDDIMScheduler.ParseConfig("""{"thresholding": true}""")).Message);
        Assert.Contains("beta_schedule", Assert.Throws<NotSupportedException>(() =>
            new ArrayDDIMScheduler(ArrayDDIMScheduler.ParseConfig("""{"beta_schedule": "sigmoid"}"""))).Message);
        Assert.Contains("beta_end", Assert.Throws<InvalidDataException>(() => ArrayDDIMScheduler.ParseConfig("""{"beta_end": "high"}""")).Message);
    }

    private static void AssertSameTrajectory(string name, IDiffusionScheduler expected, ArrayDDIMScheduler actual, int steps)
    {
        using var scope = NewDisposeScope();
        var expectedAlphas = expected.AlphasCumprod.data<float>().ToArray();
        var actualAlphas = actual.AlphasCumprod;
        Assert.Equal(expectedAlphas.Length, actualAlphas.Length);
        // libtorch's vectorised linspace rounds some betas an ulp away from the scalar formula (which lanes depends on
        // the CPU's vector width), so ᾱ agrees to float precision rather than bit for bit.
        for (int i = 0; i < expectedAlphas.Length; i++)
            Assert.True(Math.Abs(expectedAlphas[i] - actualAlphas[i]) <= 1e-6, $"{name}: ᾱ[{i}] {actualAlphas[i]} vs {expectedAlphas[i]}");

        expected.SetTimesteps(steps);
        actual.SetTimesteps(steps);
        Assert.Equal(expected.Timesteps, actual.Timesteps);

        var generator = new Generator(42);
        long[] shape = [2, 3, 4, 4];
        var sample = randn(shape, generator: generator);
        var arraySample = sample.data<float>().ToArray();
        foreach (long t in expected.Timesteps)
        {
            var modelOutput = randn(shape, generator: generator);
            var noise = randn(shape, generator: generator);
            var next = expected.Step(modelOutput, t, sample, ((DDIMScheduler)expected).Eta > 0 ? noise : null).PrevSample;
            var arrayNext = actual.Step(modelOutput.data<float>().ToArray(), t, arraySample, actual.Eta > 0 ? noise.data<float>().ToArray() : null);
            double error = Fixtures.RelativeError(tensor(arrayNext, shape), next);
            Assert.True(error <= 1e-5, $"{name}: step at t={t} differs by {error}");
            sample = next;
            arraySample = arrayNext;
        }
    }
}
