using System.Buffers.Binary;
using DiffusionPrune.Tests.Pipeline;
using static DiffusionPrune.Tests.Cli.CliTests;

namespace DiffusionPrune.Tests.Cli;

/// <summary><c>dprune sample</c> on a Stable Diffusion pipeline folder (a copy of sd-pipeline-small), through the real executable.</summary>
public class StableDiffusionCliTests
{
    /// <summary>A PNG's width, height and colour type, from its IHDR chunk (bytes 16-25).</summary>
    private static (int Width, int Height, int ColorType) PngHeader(byte[] png)
    {
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
        return (BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)), BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20)), png[25]);
    }

    [Fact]
    public void Sample_with_a_prompt_writes_an_rgb_grid_of_decoded_images_and_the_same_seed_gives_the_same_bytes()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string[] Args(string output, string seed) =>
        [
            "sample", "--model", pipeline, "--prompt", "a photograph of an astronaut riding a horse", "--negative-prompt", "blurry",
            "--guidance-scale", "7.5", "--steps", "2", "--seed", seed, "--scheduler", "ddim", "--count", "2", "--output", output,
        ];

        var (code, _, stderr) = Dprune(Args(temp.File("a.png"), "3"));
        Assert.True(code == 0, stderr);
        (code, _, stderr) = Dprune(Args(temp.File("b.png"), "3"));
        Assert.True(code == 0, stderr);
        (code, _, stderr) = Dprune(Args(temp.File("c.png"), "4"));
        Assert.True(code == 0, stderr);

        var a = File.ReadAllBytes(temp.File("a.png"));
        // Two 32 x 32 images (16 x 16 latents, VAE factor 2) side by side with 2-pixel gaps: 2 * 32 + 3 * 2 by 32 + 2 * 2, RGB (colour type 2).
        Assert.Equal((70, 36, 2), PngHeader(a));
        Assert.Equal(a, File.ReadAllBytes(temp.File("b.png")));
        Assert.NotEqual(a, File.ReadAllBytes(temp.File("c.png")));
    }

    [Fact]
    public void A_pipeline_sampled_without_a_prompt_is_refused_asking_for_one()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);

        var (code, _, stderr) = Dprune("sample", "--model", pipeline, "--steps", "2", "--output", temp.File("x.png"));

        Assert.Equal(2, code);
        Assert.Contains("--prompt", stderr);
        Assert.False(File.Exists(temp.File("x.png")));
    }

    [Fact]
    public void A_prompt_for_a_model_that_is_not_a_pipeline_is_refused()
    {
        using var temp = Fixtures.Temp();

        var (code, _, stderr) = Dprune("sample", "--model", Fixtures.Diffusers("unet2d-small", "model"),
            "--scheduler-config", Fixtures.Diffusers("unet2d-small", "scheduler_config.json"), "--steps", "2", "--count", "1",
            "--prompt", "a red cube", "--output", temp.File("x.png"));

        Assert.Equal(2, code);
        Assert.Contains("not a Stable Diffusion pipeline", stderr);
        Assert.False(File.Exists(temp.File("x.png")));
    }
}
