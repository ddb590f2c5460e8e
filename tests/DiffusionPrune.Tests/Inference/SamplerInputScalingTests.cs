using DiffusionPrune.Inference;
using DiffusionPrune.Schedulers;
using DiffusionPrune.Tests.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Inference;

/// <summary>
/// DiffusionSampler drives a scheduler the way diffusers' pipelines do: noise · init_noise_sigma after set_timesteps,
/// the model fed scale_model_input(latents, t) and the scheduler's own timestep values.
/// </summary>
public sealed class SamplerInputScalingTests
{
    private static SchedulerConfig StableDiffusion1x(string className, string spacing) => SchedulerConfig.Defaults(className) with
    {
        BetaSchedule = "scaled_linear", BetaStart = 0.00085, BetaEnd = 0.012, StepsOffset = 1, TimestepSpacing = spacing,
    };

    /// <summary>A stand-in model that records what it was given and answers tanh(x · (0.5 + 0.1 i)).</summary>
    private sealed class RecordingModel
    {
        public List<Tensor> Inputs { get; } = [];
        public List<Tensor> Timesteps { get; } = [];

        public Tensor Denoise(Tensor sample, Tensor timestep, Tensor? labels)
        {
            int i = Inputs.Count;
            Inputs.Add(sample.clone().DetachFromDisposeScope());
            Timesteps.Add(timestep.clone().DetachFromDisposeScope());
            return (sample * (0.5 + 0.1 * i)).tanh();
        }
    }

    [Theory]
    [InlineData("leading", 10)]
    [InlineData("linspace", 7)]
    public void EulerSamplingScalesTheInitialNoiseAndEveryModelInput(string spacing, int steps)
    {
        using var scope = NewDisposeScope();
        using var scheduler = new EulerDiscreteScheduler(StableDiffusion1x(SchedulerConfig.EulerDiscreteClassName, spacing));
        var noise = randn([1, 4, 4, 4], generator: new Generator(11));
        var model = new RecordingModel();

        var result = DiffusionSampler.Sample(model.Denoise, null, scheduler, noise, null, new SampleOptions(steps, KeepTrajectory: true));

        // The scheduler after the run holds the schedule the sampler used; its sigmas are what the scaling must follow.
        float[] sigmas = scheduler.Sigmas;
        double initNoiseSigma = scheduler.InitNoiseSigma;
        Assert.True(initNoiseSigma > 1, $"init_noise_sigma {initNoiseSigma}"); // Euler's latents are x0 + σ·ε: far from unit variance
        Assert.Equal(steps, model.Inputs.Count);
        // step 0: the model sees (noise · init_noise_sigma) / sqrt(σ_0² + 1)
        var expectedFirst = noise * initNoiseSigma / Math.Sqrt((double)sigmas[0] * sigmas[0] + 1);
        TensorAssert.Close(expectedFirst, model.Inputs[0], "first model input", 1e-6);
        // later steps: the latent after step i − 1, divided by sqrt(σ_i² + 1)
        for (int i = 1; i < steps; i++)
        {
            var expected = result.Trajectory![i - 1] / Math.Sqrt((double)sigmas[i] * sigmas[i] + 1);
            TensorAssert.Close(expected, model.Inputs[i], $"model input {i}", 1e-6);
        }
        // the model is conditioned on diffusers' timestep values: fractional ones (linspace 7: 999·i/6) as float32
        var modelTimesteps = scheduler.ModelTimesteps;
        for (int i = 0; i < steps; i++)
        {
            bool fractional = modelTimesteps[i] != Math.Round(modelTimesteps[i]);
            Assert.Equal(fractional ? ScalarType.Float32 : ScalarType.Int64, model.Timesteps[i].dtype);
            Assert.Equal(modelTimesteps[i], model.Timesteps[i].to_type(ScalarType.Float64).item<double>(), 1e-3);
        }
        Assert.Equal(spacing == "linspace", modelTimesteps.Any(t => t != Math.Round(t)));

        // the same run by hand, in diffusers' pipeline order, gives the sampler's result
        scheduler.SetTimesteps(steps);
        var latents = noise * scheduler.InitNoiseSigma;
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
        {
            var output = (scheduler.ScaleModelInput(latents, timesteps[i]) * (0.5 + 0.1 * i)).tanh();
            latents = scheduler.Step(output, timesteps[i], latents).PrevSample;
        }
        Assert.True(TensorAssert.BitExact(latents, result.Final));

        foreach (var t in model.Inputs.Concat(model.Timesteps)) t.Dispose();
    }

    [Fact]
    public void DdimSamplingFeedsTheNoiseUnscaled()
    {
        using var scope = NewDisposeScope();
        using var scheduler = new DDIMScheduler(StableDiffusion1x(SchedulerConfig.DDIMClassName, "leading"));
        var noise = randn([1, 4, 4, 4], generator: new Generator(12));
        var model = new RecordingModel();

        DiffusionSampler.Sample(model.Denoise, null, scheduler, noise, null, new SampleOptions(3));

        Assert.True(TensorAssert.BitExact(noise, model.Inputs[0]));
        Assert.Equal(ScalarType.Int64, model.Timesteps[0].dtype);
        Assert.Equal(667L, model.Timesteps[0].item<long>()); // leading 1000 // 3 = 333: 666 + steps_offset 1
        foreach (var t in model.Inputs.Concat(model.Timesteps)) t.Dispose();
    }
}
