using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Tests.Inference.Onnx;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pipeline;

/// <summary>
/// An exported Stable Diffusion ONNX pipeline (sd-pipeline-small) run without TorchSharp: the array runner
/// <see cref="OnnxStableDiffusionSession"/> in-process, and samples/OnDeviceDemo as a process (as a user runs it), each
/// against the core's <see cref="OnnxStableDiffusionPipeline"/> from the same noise and prompts: max |demo − core| &lt;= 1e-4
/// on the [0, 1] image. Also the demo's refusals and its fall-through to the single-model bundle path.
/// </summary>
public class OnDeviceDemoPipelineTests(ExportedSdPipeline fixture, ITestOutputHelper output) : IClassFixture<ExportedSdPipeline>
{
    /// <summary>On the [0, 1] image (and, relative, on the latents): float32 summation order over a few guided steps and the VAE.</summary>
    private const double Tolerance = 1e-4;

    private const string Prompt = "a photograph of an astronaut riding a horse";
    private const int Steps = 4;

    private static Tensor Noise(int count, ulong seed) => randn([count, 4, 16, 16], generator: new Generator(seed, CPU));

    /// <summary>The core's ONNX pipeline (TorchSharp tensors around ONNX Runtime) from <paramref name="noise"/>.</summary>
    private static StableDiffusionOutput Core(string folder, string prompt, string negativePrompt, double guidance, Tensor noise, string? scheduler = null)
    {
        using var core = OnnxStableDiffusionPipeline.Open(folder, "cpu", scheduler);
        using var embeddings = core.EncodePrompt(prompt, negativePrompt, (int)noise.shape[0], classifierFreeGuidance: guidance > 1.0);
        return core.Generate(embeddings, noise, new SampleOptions(Steps, guidance));
    }

    /// <summary>Checks a run against the core's output: same timesteps, finite, a real picture, within <see cref="Tolerance"/>.</summary>
    private double AssertSameImage(string what, StableDiffusionOutput expected, Tensor actualLatents, Tensor actualImage, long[] actualTimesteps)
    {
        Assert.Equal(expected.Timesteps, actualTimesteps);
        Assert.Equal(expected.Image.shape, actualImage.shape);
        Assert.Equal(expected.Latents.shape, actualLatents.shape);
        Assert.True(isfinite(actualLatents).all().item<bool>(), $"{what}: the latents hold a NaN or infinity");
        Assert.True(isfinite(actualImage).all().item<bool>(), $"{what}: the image holds a NaN or infinity");
        // a real picture, not a flat one that any two runners would agree on
        Assert.True(expected.Image01.std().item<float>() > 0.01, "the reference image is flat");
        double latentError = Fixtures.RelativeError(actualLatents, expected.Latents);
        using var actual01 = (actualImage / 2 + 0.5).clamp(0, 1);
        double imageError = (actual01 - expected.Image01).abs().max().item<float>();
        output.WriteLine($"{what}: latents max relative error {latentError:E2}, image max |{what} - core| {imageError:E2} on [0, 1]");
        Assert.True(latentError <= Tolerance, $"{what}: latents differ by {latentError:E3} (relative)");
        Assert.True(imageError <= Tolerance, $"{what}: image differs by {imageError:E3}");
        return imageError;
    }

    [Theory]
    [InlineData(Prompt, "blurry", 7.5)]
    [InlineData(Prompt, "", 1.0)] // no guidance: the prompt branch alone
    [InlineData("", "", 7.5)] // the empty prompt
    public void Array_session_generates_the_core_onnx_pipelines_image_from_the_same_noise(string prompt, string negativePrompt, double guidance)
    {
        using var noise = Noise(2, 7);
        using var expected = Core(fixture.Exported, prompt, negativePrompt, guidance, noise);
        using var session = OnnxStableDiffusionSession.Open(fixture.Exported, "cpu");

        var result = session.Generate(prompt, negativePrompt, noise.contiguous().data<float>().ToArray(), [2, 4, 16, 16], Steps, guidance);

        Assert.Equal(new[] { 2, 3, 32, 32 }, result.ImageShape);
        using var latents = tensor(result.Latents, [2, 4, 16, 16]);
        using var image = tensor(result.Image, [2, 3, 32, 32]);
        AssertSameImage("array session", expected, latents, image, result.Timesteps);
    }

    [Fact]
    public void Array_session_encodes_prompts_as_the_core_onnx_pipeline_does()
    {
        using var core = OnnxStableDiffusionPipeline.Open(fixture.Exported, "cpu");
        using var session = OnnxStableDiffusionSession.Open(fixture.Exported, "cpu");
        using var expected = core.EncodePrompt("a lighthouse by the sea, café, 1998", "low quality", imagesPerPrompt: 2, classifierFreeGuidance: true);

        var (prompt, negative, shape) = session.EncodePrompt("a lighthouse by the sea, café, 1998", "low quality", 2, classifierFreeGuidance: true);

        Assert.Equal(expected.PromptEmbeds.shape, shape.Select(d => (long)d).ToArray());
        using var actualPrompt = tensor(prompt, expected.PromptEmbeds.shape);
        using var actualNegative = tensor(negative!, expected.PromptEmbeds.shape);
        // the same graph on the same ids: identical, not merely close
        Assert.Equal(0.0, Fixtures.RelativeError(actualPrompt, expected.PromptEmbeds));
        Assert.Equal(0.0, Fixtures.RelativeError(actualNegative, expected.NegativePromptEmbeds!));
        Assert.Null(session.EncodePrompt("x", "y", 1, classifierFreeGuidance: false).Negative);
    }

    [Theory]
    [InlineData(Prompt, "blurry", "7.5")]
    [InlineData("", "", "7.5")] // the empty prompt, --prompt given as ""
    public void The_demo_runs_an_exported_pipeline_from_noise_to_the_core_pipelines_image(string prompt, string negativePrompt, string guidance)
    {
        using var temp = Fixtures.Temp();
        using var noise = Noise(2, 11);
        SafetensorsWriter.Write(temp.File("noise.safetensors"), new Dictionary<string, Tensor> { ["noise"] = noise });
        string result = temp.File("out/demo.safetensors");

        var (code, stdout, stderr) = OnDeviceDemoTests.Demo(fixture.Exported, "--prompt", prompt, "--negative-prompt", negativePrompt, "--guidance-scale", guidance,
            "--steps", Steps.ToString(), "--noise", temp.File("noise.safetensors"), "--provider", "cpu", "--batch", "2", "--output", result);

        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("ONNX Runtime execution provider: CPU", stdout);
        Assert.Contains("images 1-2/2: ", stdout);
        Assert.Contains($"wrote {result}", stdout);
        using var expected = Core(fixture.Exported, prompt, negativePrompt, double.Parse(guidance, System.Globalization.CultureInfo.InvariantCulture), noise);
        using var file = SafetensorsFile.Open(result);
        using var latents = file.ReadFloat("final");
        using var image = file.ReadFloat("image");
        using var timesteps = file.Read("timesteps");
        AssertSameImage("demo", expected, latents, image, timesteps.data<long>().ToArray());
    }

    [Fact]
    public void The_demo_writes_a_png_from_a_prompt_with_its_own_seeded_noise_the_same_for_any_batch()
    {
        using var temp = Fixtures.Temp();
        string[] Args(string png, string batch) =>
            [fixture.Exported, "--prompt", Prompt, "--count", "3", "--batch", batch, "--steps", "3", "--seed", "5", "--provider", "cpu", "--output", png];

        var (code, stdout, stderr) = OnDeviceDemoTests.Demo(Args(temp.File("one-by-one.png"), "1"));
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("image 3/3: ", stdout);
        Assert.Contains("guidance scale 7.5", stdout); // the default
        var (code2, stdout2, stderr2) = OnDeviceDemoTests.Demo(Args(temp.File("together.png"), "3"));
        Assert.True(code2 == 0, stderr2 + stdout2);

        // three 32 x 32 RGB images tiled 2 x 2 with 2-pixel gaps, as dprune sample tiles several
        using var picture = Image.Load<Rgb24>(temp.File("one-by-one.png"));
        Assert.Equal((2 * 32 + 3 * 2, 2 * 32 + 3 * 2), (picture.Width, picture.Height));
        using var together = Image.Load<Rgb24>(temp.File("together.png"));
        // the noise is drawn for all images from the seed (ArrayDiffusionSampler.GaussianNoise), then sampled per batch
        using var session = OnnxStableDiffusionSession.Open(fixture.Exported, "cpu");
        var noise = ArrayDiffusionSampler.GaussianNoise(3 * 4 * 16 * 16, 5);
        var expected = session.Generate(Prompt, "", noise, [3, 4, 16, 16], 3, 7.5);
        var (pixels, width, height, channels) = PixelGrid.Tile(expected.Image, expected.ImageShape, padding: 2);
        Assert.Equal((picture.Width, picture.Height, 3), (width, height, channels));
        int worst = 0, worstBatch = 0;
        for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++)
        {
            var p = picture[x, y];
            var q = together[x, y];
            for (int c = 0; c < 3; c++)
            {
                byte want = pixels[(y * width + x) * 3 + c];
                byte got = c == 0 ? p.R : c == 1 ? p.G : p.B, gotTogether = c == 0 ? q.R : c == 1 ? q.G : q.B;
                worst = Math.Max(worst, Math.Abs(got - want));
                worstBatch = Math.Max(worstBatch, Math.Abs(got - gotTogether));
            }
        }
        output.WriteLine($"PNG vs in-process: max {worst} levels; batch 1 vs batch 3: max {worstBatch} levels");
        // float error below 1e-4 can move a value across a rounding boundary: one level at most
        Assert.True(worst <= 1, $"the PNG differs from the session's image by {worst} levels");
        Assert.True(worstBatch <= 1, $"the images depend on --batch ({worstBatch} levels)");
        using var sessionImage = tensor(expected.Image);
        Assert.True(sessionImage.std().item<float>() > 0.01, "the image is flat");
    }

    [Fact]
    public void The_demo_refuses_a_scheduler_it_cannot_run_naming_ddim_and_runs_it_as_ddim_when_asked()
    {
        using var temp = Fixtures.Temp();
        string folder = CopyExported(temp);
        foreach (var (configFile, edit) in new (string, Action<JsonObject>)[]
                 {
                     ("scheduler/scheduler_config.json", c => { c["_class_name"] = "PNDMScheduler"; c["skip_prk_steps"] = true; }),
                     ("model_index.json", c => c["scheduler"] = new JsonArray("diffusers", "PNDMScheduler")),
                 })
        {
            var json = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, configFile)))!.AsObject();
            edit(json);
            File.WriteAllText(Path.Combine(folder, configFile), json.ToJsonString());
        }
        using var noise = Noise(1, 3);
        SafetensorsWriter.Write(temp.File("noise.safetensors"), new Dictionary<string, Tensor> { ["noise"] = noise });
        string result = temp.File("demo.safetensors");

        var (code, stdout, stderr) = OnDeviceDemoTests.Demo(folder, "--prompt", Prompt, "--steps", Steps.ToString(), "--noise", temp.File("noise.safetensors"),
            "--provider", "cpu", "--output", result);
        Assert.Equal(2, code);
        Assert.Contains("PNDMScheduler", stderr);
        Assert.Contains("DDIMScheduler", stderr);
        Assert.Contains("--scheduler ddim", stderr);
        Assert.DoesNotContain("Exception", stderr);
        Assert.False(File.Exists(result));

        // --scheduler ddim: DDIM on the PNDM config's schedule, as the core's --scheduler ddim runs it
        (code, stdout, stderr) = OnDeviceDemoTests.Demo(folder, "--prompt", Prompt, "--steps", Steps.ToString(), "--noise", temp.File("noise.safetensors"),
            "--provider", "cpu", "--scheduler", "ddim", "--output", result);
        Assert.True(code == 0, stderr + stdout);
        using var expected = Core(folder, Prompt, "", 7.5, noise, scheduler: "ddim");
        using var file = SafetensorsFile.Open(result);
        using var latents = file.ReadFloat("final");
        using var image = file.ReadFloat("image");
        using var timesteps = file.Read("timesteps");
        AssertSameImage("demo --scheduler ddim", expected, latents, image, timesteps.data<long>().ToArray());

        (code, _, stderr) = OnDeviceDemoTests.Demo(folder, "--scheduler", "euler", "--provider", "cpu", "--output", temp.File("x.png"));
        Assert.Equal(2, code);
        Assert.Contains("DDIM only", stderr);
        Assert.Contains("dprune sample --backend onnx", stderr);
    }

    [Fact]
    public void A_folder_that_is_not_a_pipeline_runs_the_single_model_bundle_path_which_refuses_pipeline_options()
    {
        using var temp = Fixtures.Temp();
        string bundle = new TinyOnnxBundle().WriteTo(temp.File("bundle"));

        var (code, stdout, stderr) = OnDeviceDemoTests.Demo(bundle, "--count", "2", "--steps", "2", "--provider", "cpu", "--output", temp.File("grid.png"));
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("image 2/2: ", stdout); // the bundle path's default is 16 images; --count 2 ran
        Assert.DoesNotContain("prompt", stdout);
        Assert.True(File.Exists(temp.File("grid.png")));

        (code, _, stderr) = OnDeviceDemoTests.Demo(bundle, "--prompt", "a cat", "--steps", "2", "--provider", "cpu", "--output", temp.File("grid2.png"));
        Assert.Equal(2, code);
        Assert.Contains("--prompt is for Stable Diffusion pipelines", stderr);
        Assert.False(File.Exists(temp.File("grid2.png")));
    }

    [Fact]
    public void The_demo_refuses_a_diffusers_pipeline_folder_with_the_export_command()
    {
        var (code, _, stderr) = OnDeviceDemoTests.Demo(fixture.Pipeline, "--prompt", "a cat", "--provider", "cpu", "--output", Path.Combine(Path.GetTempPath(), "never.png"));
        Assert.Equal(2, code);
        Assert.Contains("StableDiffusionPipeline", stderr);
        Assert.Contains("dprune export --model", stderr);
        Assert.DoesNotContain("Exception", stderr);
    }

    [Fact]
    public void The_demo_refuses_noise_of_the_wrong_shape_or_dtype()
    {
        using var temp = Fixtures.Temp();
        using var threeChannels = randn([1, 3, 16, 16]);
        SafetensorsWriter.Write(temp.File("three.safetensors"), new Dictionary<string, Tensor> { ["noise"] = threeChannels });
        using var half = randn([1, 4, 16, 16]).to_type(ScalarType.Float16);
        SafetensorsWriter.Write(temp.File("half.safetensors"), new Dictionary<string, Tensor> { ["noise"] = half });

        var (code, _, stderr) = OnDeviceDemoTests.Demo(fixture.Exported, "--noise", temp.File("three.safetensors"), "--provider", "cpu", "--output", temp.File("a.png"));
        Assert.Equal(2, code);
        Assert.Contains("[1, 3, 16, 16]", stderr);
        Assert.Contains("[B, 4, h, w]", stderr);
        (code, _, stderr) = OnDeviceDemoTests.Demo(fixture.Exported, "--noise", temp.File("half.safetensors"), "--provider", "cpu", "--output", temp.File("b.png"));
        Assert.Equal(2, code);
        Assert.Contains("F16", stderr);
        Assert.False(File.Exists(temp.File("a.png")) || File.Exists(temp.File("b.png")));
    }

    /// <summary>A copy of the exported pipeline, for tests that change it.</summary>
    private string CopyExported(TempFolder temp)
    {
        string target = temp.File("onnx-pipeline");
        foreach (var file in Directory.EnumerateFiles(fixture.Exported, "*", SearchOption.AllDirectories))
        {
            string destination = Path.Combine(target, Path.GetRelativePath(fixture.Exported, file));
            Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
            File.Copy(file, destination);
        }
        return target;
    }
}
