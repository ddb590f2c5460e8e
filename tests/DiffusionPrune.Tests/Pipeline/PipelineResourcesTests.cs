using DiffusionPrune.Pipeline.StableDiffusion;
using static DiffusionPrune.Tests.Cli.CliTests;

namespace DiffusionPrune.Tests.Pipeline;

/// <summary>The memory estimate of a Stable Diffusion pipeline, from its configs and headers, and the refusal it makes before loading.</summary>
public class PipelineResourcesTests
{
    private static string Fixture => Fixtures.Diffusers("sd-pipeline-small", "pipeline");

    [Fact]
    public void The_estimate_counts_every_components_weights_exactly_and_grows_with_the_images()
    {
        var one = PipelineResources.Sampling(Fixture, 1, guided: true);
        using var pipeline = StableDiffusionPipeline.Load(Fixture);
        long parameters = new TorchSharp.torch.nn.Module[] { pipeline.TextEncoder, pipeline.Unet, pipeline.Vae }.Sum(m => m.parameters().Sum(p => p.numel()));
        Assert.Equal(4 * parameters, one.WeightBytes);
        Assert.True(one.ActivationBytes > 0);
        var eight = PipelineResources.Sampling(Fixture, 8, guided: true);
        Assert.Equal(one.WeightBytes, eight.WeightBytes);
        Assert.True(eight.ActivationBytes >= 7 * one.ActivationBytes);
        Assert.True(PipelineResources.Sampling(Fixture, 8, guided: false).ActivationBytes <= eight.ActivationBytes);
        Assert.Contains("sampling 8 images with guidance", eight.Workload);
    }

    [Fact]
    public void Sampling_that_does_not_fit_is_refused_before_the_pipeline_loads()
    {
        using var temp = Fixtures.Temp();
        var (code, _, stderr) = Dprune("--max-memory", "1M", "sample", "--model", Fixture, "--prompt", "a cat", "--steps", "2", "--output", temp.File("cat.png"));
        Assert.Equal(2, code);
        Assert.Contains("sampling 1 image with guidance needs about", stderr);
        Assert.Contains("nothing was allocated", stderr);
        Assert.False(File.Exists(temp.File("cat.png")));
    }
}
