using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Inference;

public class SamplerParityTests
{
    [Fact]
    public void Ten_step_DDIM_trajectory_matches_diffusers()
    {
        using var model = ModelFamilies.Load(Fixtures.Diffusers("unet2d-small", "model"));
        using var scheduler = Scheduler.FromFile(Fixtures.Diffusers("unet2d-small", "scheduler_config.json"));
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("unet2d-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        var result = DiffusionSampler.Sample(model, scheduler, io.ReadFloat("ddim_noise"), null, new SampleOptions(10, KeepTrajectory: true));
        Assert.Equal(io.Read("ddim_timesteps").data<long>().ToArray(), result.Timesteps);
        var expected = io.ReadFloat("ddim_trajectory");
        Assert.Equal(expected.shape, result.Trajectory!.shape);
        double error = Fixtures.RelativeError(result.Trajectory, expected);
        Assert.True(error <= 1e-3, $"trajectory error {error}");
        Assert.True(Fixtures.RelativeError(result.Final, expected[-1]) <= 1e-3);
    }

    [Fact]
    public void Guidance_scale_one_equals_plain_conditional_prediction_and_higher_scale_extrapolates()
    {
        using var model = ModelFamilies.Load(Fixtures.Diffusers("dit-small", "model"));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = randn(2, 4, 16, 16, generator: new Generator(3));
        var t = tensor(400L);
        var labels = tensor(new long[] { 1, 7 });
        var plain = DiffusionSampler.Guided(model.Predict, x, t, labels, model.NullClass, 1.0);
        Assert.True(Fixtures.RelativeError(plain, model.Predict(x, t, labels)) < 1e-6);
        var cond = model.Predict(x, t, labels);
        var uncond = model.Predict(x, t, full(2, 10L));
        var guided = DiffusionSampler.Guided(model.Predict, x, t, labels, model.NullClass, 4.0);
        Assert.True(Fixtures.RelativeError(guided, uncond + (cond - uncond) * 4.0) < 1e-5);
    }

    [Fact]
    public void Guidance_without_a_null_class_is_refused()
    {
        using var model = ModelFamilies.Load(Fixtures.Diffusers("unet2d-small", "model"));
        using var scheduler = Scheduler.FromFile(Fixtures.Diffusers("unet2d-small", "scheduler_config.json"));
        var error = Assert.Throws<ArgumentException>(() =>
            DiffusionSampler.Sample(model, scheduler, randn(1, 1, 32, 32), null, new SampleOptions(2, GuidanceScale: 3)));
        Assert.Contains("null class", error.Message);
    }
}
