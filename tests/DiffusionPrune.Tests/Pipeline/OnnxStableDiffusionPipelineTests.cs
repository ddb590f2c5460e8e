using System.Text.Json.Nodes;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pipeline;

/// <summary>A copy of sd-pipeline-small and its ONNX export, made once for <see cref="OnnxStableDiffusionPipelineTests"/>.</summary>
public sealed class ExportedSdPipeline : IDisposable
{
    private readonly TempFolder _temp = Fixtures.Temp();

    public ExportedSdPipeline()
    {
        Pipeline = StableDiffusionPipelineTests.CopyPipeline(_temp);
        Exported = _temp.File("onnx-pipeline");
        Export = StableDiffusionOnnxExporter.Export(Pipeline, Exported);
    }

    /// <summary>The diffusers pipeline (safetensors).</summary>
    public string Pipeline { get; }

    /// <summary>Its ONNX pipeline; tests read it and never change it.</summary>
    public string Exported { get; }

    public StableDiffusionOnnxExport Export { get; }

    public void Dispose() => _temp.Dispose();
}

/// <summary>
/// Prompt to image through ONNX Runtime (<see cref="OnnxStableDiffusionPipeline"/>, behind <c>dprune sample --backend onnx</c>)
/// against the TorchSharp pipeline (<see cref="StableDiffusionPipeline"/>) on the same sd-pipeline-small copy: the same
/// prompt, seed and scheduler give the same image, max |onnx - torch| &lt;= 1e-4 on the [0, 1] image, for the original
/// and for pruned pipelines; and the refusals of folders that are not what the backend runs.
/// </summary>
public class OnnxStableDiffusionPipelineTests(ExportedSdPipeline fixture, ITestOutputHelper output) : IClassFixture<ExportedSdPipeline>
{
    /// <summary>On the [0, 1] image (and, relative, on the latents): float32 summation order over a few guided steps and the VAE.</summary>
    private const double Tolerance = 1e-4;

    private static SampleRequest Request(string model, string outputPath, string backend, string scheduler, double guidance = 7.5, int steps = 4) => new()
    {
        ModelPath = model,
        OutputPath = outputPath,
        Prompt = "a photograph of an astronaut riding a horse",
        NegativePrompt = "blurry",
        GuidanceScale = guidance,
        Steps = steps,
        Seed = 7,
        Count = 2,
        SchedulerName = scheduler,
        Backend = backend,
        Provider = "cpu",
    };

    /// <summary>Runs both backends on the same request (safetensors output, so the latents are compared too) and checks they agree.</summary>
    private (double ImageError, double LatentError) AssertSameImages(string torchPipeline, string onnxPipeline, string scheduler, double guidance, TempFolder temp)
    {
        using var torchOutput = StableDiffusionSampleRunner.Run(Request(torchPipeline, temp.File("torch.safetensors"), "torch", scheduler, guidance), CPU);
        var lines = new List<string>();
        using var onnxOutput = StableDiffusionSampleRunner.Run(Request(onnxPipeline, temp.File("onnx.safetensors"), "onnx", scheduler, guidance), CPU, lines.Add);

        Assert.Contains(lines, l => l.Contains("ONNX Runtime execution provider: CPU"));
        Assert.True(File.Exists(temp.File("onnx.safetensors")));
        Assert.Equal(torchOutput.Timesteps, onnxOutput.Timesteps);
        Assert.Equal(new long[] { 2, 3, 32, 32 }, onnxOutput.Image01.shape);
        Assert.Equal(torchOutput.Image01.shape, onnxOutput.Image01.shape);
        Assert.True(isfinite(onnxOutput.Latents).all().item<bool>(), "the ONNX latents hold a NaN or infinity");
        Assert.True(isfinite(onnxOutput.Image).all().item<bool>(), "the ONNX image holds a NaN or infinity");
        // a real picture, not a flat one that any two backends would agree on
        Assert.True(torchOutput.Image01.std().item<float>() > 0.01, "the reference image is flat");
        double latentError = Fixtures.RelativeError(onnxOutput.Latents, torchOutput.Latents);
        double imageError = (onnxOutput.Image01 - torchOutput.Image01).abs().max().item<float>();
        output.WriteLine($"{scheduler}, {torchOutput.Timesteps.Length} steps, guidance {guidance}: latents max relative error {latentError:E2}, " +
            $"image max |onnx - torch| {imageError:E2}");
        Assert.True(latentError <= Tolerance, $"latents differ by {latentError:E3} (relative)");
        Assert.True(imageError <= Tolerance, $"image differs by {imageError:E3}");
        return (imageError, latentError);
    }

    [Theory]
    [InlineData("ddim", 7.5)]
    [InlineData("euler", 7.5)] // fractional timesteps: the U-Net graph takes float32 timesteps
    [InlineData("euler-a", 7.5)] // stochastic steps: the same generator draws the same step noise on both backends
    [InlineData("dpm++2m", 7.5)]
    [InlineData("pndm", 7.5)]
    [InlineData("ddim", 1.0)] // no guidance: the prompt branch alone
    public void Onnx_backend_generates_the_torch_backends_image_from_the_exported_pipeline(string scheduler, double guidance)
    {
        using var temp = Fixtures.Temp();
        AssertSameImages(fixture.Pipeline, fixture.Exported, scheduler, guidance, temp);
    }

    [Fact]
    public void Onnx_text_encoder_gives_the_torch_text_encoders_states_for_prompt_and_negative_prompt()
    {
        using var torchPipeline = StableDiffusionPipeline.Load(fixture.Pipeline);
        using var onnxPipeline = OnnxStableDiffusionPipeline.Open(fixture.Exported, "cpu");
        using var expected = torchPipeline.EncodePrompt("a lighthouse by the sea, 1998", "low quality", imagesPerPrompt: 2);
        using var actual = onnxPipeline.EncodePrompt("a lighthouse by the sea, 1998", "low quality", imagesPerPrompt: 2, classifierFreeGuidance: true);

        Assert.Equal(expected.PromptEmbeds.shape, actual.PromptEmbeds.shape);
        double error = Math.Max(Fixtures.RelativeError(actual.PromptEmbeds, expected.PromptEmbeds),
            Fixtures.RelativeError(actual.NegativePromptEmbeds!, expected.NegativePromptEmbeds!));
        output.WriteLine($"text states max relative error {error:E2}");
        Assert.True(error <= 1e-5, $"text states differ by {error:E3}");
        Assert.False(Fixtures.RelativeError(actual.PromptEmbeds, actual.NegativePromptEmbeds!) < 1e-3, "prompt and negative prompt encode alike");
    }

    [Fact]
    public void Export_writes_the_onnx_pipeline_layout_with_configs_index_and_model_card()
    {
        string folder = fixture.Exported;
        foreach (var file in new[]
                 {
                     "unet/model.onnx", "unet/config.json", "vae_decoder/model.onnx", "vae_decoder/config.json", "text_encoder/model.onnx",
                     "text_encoder/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json", "model_index.json", "README.md",
                 })
        {
            Assert.True(File.Exists(Path.Combine(folder, file)), $"{file} is missing");
            Assert.Contains(file, fixture.Export.Files);
        }
        // every tokenizer file of the source (its configs too), byte for byte
        foreach (var file in Directory.GetFiles(Path.Combine(fixture.Pipeline, "tokenizer")))
            Assert.Equal(File.ReadAllBytes(file), File.ReadAllBytes(Path.Combine(folder, "tokenizer", Path.GetFileName(file))));
        Assert.False(Directory.Exists(Path.Combine(folder, "vae")));
        Assert.False(Directory.EnumerateFiles(folder, "*.safetensors", SearchOption.AllDirectories).Any());

        using var source = StableDiffusionPipeline.Load(fixture.Pipeline);
        Assert.Equal(source.Unet.ParameterCount(), fixture.Export.UNetParameters);
        Assert.False(fixture.Export.Pruned);
        Assert.All(fixture.Export.Components, c => Assert.True(c.Parameters > 0 && c.Nodes > 0, c.Folder));
        string card = File.ReadAllText(Path.Combine(folder, "README.md"));
        Assert.Contains("OnnxStableDiffusionPipeline", card);
        Assert.Contains($"| unet parameters | {fixture.Export.UNetParameters:N0}", card);
        Assert.Contains("--backend onnx", card);
        Assert.DoesNotContain("## Pruning", card);
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "model_index.json")))!;
        Assert.Equal("OnnxStableDiffusionPipeline", (string?)index["_class_name"]);
        Assert.False((bool)index["requires_safety_checker"]!);
    }

    private static PruneRequest PruneRequestFor(string pipeline, string method, string outputPath) => new()
    {
        ModelPath = pipeline,
        Method = method,
        TargetParams = 0.2,
        OutputPath = outputPath,
        Iterations = 2,
        Steps = 2,
        Calibration = 2,
        Seed = 1,
    };

    [Theory]
    [InlineData("magnitude")] // narrower ResNet channels, heads and feed-forward neurons
    [InlineData("random-layer")] // whole transformers and ResNet blocks removed
    public void A_pruned_pipeline_exports_at_its_pruned_size_and_samples_the_torch_image(string method)
    {
        using var temp = Fixtures.Temp();
        string pruned = temp.File("pruned");
        var report = PruneRunner.Run(PruneRequestFor(fixture.Pipeline, method, pruned), CPU, output.WriteLine);
        string exported = temp.File("pruned-onnx");

        var export = StableDiffusionOnnxExporter.Export(pruned, exported);

        Assert.True(export.Pruned);
        Assert.Equal(report.ParametersAfter, export.UNetParameters);
        Assert.True(export.UNetParameters < fixture.Export.UNetParameters);
        Assert.InRange(export.UNetMacs, 1, fixture.Export.UNetMacs - 1);
        Assert.True(new FileInfo(Path.Combine(exported, "unet", "model.onnx")).Length < new FileInfo(Path.Combine(fixture.Exported, "unet", "model.onnx")).Length);
        var unetConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(exported, "unet", ModelFolder.Config)))!;
        Assert.NotNull(unetConfig[ModelStructure.JsonKey]);
        string card = File.ReadAllText(Path.Combine(exported, "README.md"));
        Assert.Contains("## Pruning", card);
        Assert.Contains($"| {method} |", card);
        output.WriteLine($"{method}: U-Net {fixture.Export.UNetParameters:N0} -> {export.UNetParameters:N0} parameters, {export.UNetMacs:N0} MACs");

        AssertSameImages(pruned, exported, "ddim", 7.5, temp);
    }

    [Fact]
    public void Onnx_backend_on_a_diffusers_pipeline_is_refused_saying_how_to_export_it()
    {
        using var temp = Fixtures.Temp();

        var error = Assert.Throws<ArgumentException>(() => StableDiffusionSampleRunner.Check(Request(fixture.Pipeline, temp.File("x.png"), "onnx", "ddim")));

        Assert.Contains("dprune export --model", error.Message);
        Assert.False(File.Exists(temp.File("x.png")));
    }

    [Fact]
    public void Torch_backend_on_an_exported_pipeline_is_refused_naming_the_onnx_backend()
    {
        using var temp = Fixtures.Temp();

        var error = Assert.Throws<ArgumentException>(() => StableDiffusionSampleRunner.Run(Request(fixture.Exported, temp.File("x.png"), "torch", "ddim"), CPU));

        Assert.Contains("--backend onnx", error.Message);
        Assert.False(File.Exists(temp.File("x.png")));
    }

    /// <summary>A copy of the exported pipeline, changed by <paramref name="damage"/>.</summary>
    private string DamagedCopy(TempFolder temp, Action<string> damage)
    {
        string copy = temp.File("damaged");
        foreach (var file in Directory.EnumerateFiles(fixture.Exported, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(copy, Path.GetRelativePath(fixture.Exported, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        damage(copy);
        return copy;
    }

    [Fact]
    public void An_exported_pipeline_without_a_graphs_config_is_refused_naming_the_file()
    {
        using var temp = Fixtures.Temp();
        string folder = DamagedCopy(temp, f => File.Delete(Path.Combine(f, "unet", "config.json")));

        var error = Assert.Throws<ModelFormatException>(() => OnnxStableDiffusionPipeline.Open(folder, "cpu"));

        Assert.Contains("unet/config.json", error.Message);
    }

    [Fact]
    public void A_damaged_graph_is_refused_as_a_format_error_naming_the_file()
    {
        using var temp = Fixtures.Temp();
        string folder = DamagedCopy(temp, f => File.WriteAllBytes(Path.Combine(f, "vae_decoder", "model.onnx"), [1, 2, 3, 4, 5]));

        var error = Assert.Throws<ModelFormatException>(() => OnnxStableDiffusionPipeline.Open(folder, "cpu"));

        Assert.Contains(Path.Combine("vae_decoder", "model.onnx"), error.Message);
        Assert.Contains("re-export", error.Message);
    }

    [Fact]
    public void A_graph_with_another_interface_is_refused_naming_what_it_takes()
    {
        using var temp = Fixtures.Temp();
        // the VAE decoder where the text encoder belongs: a valid ONNX model with the wrong inputs
        string folder = DamagedCopy(temp, f => File.Copy(Path.Combine(f, "vae_decoder", "model.onnx"), Path.Combine(f, "text_encoder", "model.onnx"), overwrite: true));

        var error = Assert.Throws<ModelFormatException>(() => OnnxStableDiffusionPipeline.Open(folder, "cpu"));

        Assert.Contains("latent_sample", error.Message);
        Assert.Contains("input_ids", error.Message);
    }

    [Fact]
    public void Export_refuses_an_exported_pipeline_the_source_folder_a_foreign_folder_and_the_safetensors_format()
    {
        using var temp = Fixtures.Temp();

        var again = Assert.Throws<ArgumentException>(() => StableDiffusionOnnxExporter.Export(fixture.Exported, temp.File("again")));
        Assert.Contains("already an exported ONNX pipeline", again.Message);
        Assert.False(Directory.Exists(temp.File("again")));

        var self = Assert.Throws<ArgumentException>(() => StableDiffusionOnnxExporter.Export(fixture.Pipeline, fixture.Pipeline));
        Assert.Contains("source pipeline folder", self.Message);

        string foreign = temp.File("notes");
        Directory.CreateDirectory(foreign);
        File.WriteAllText(Path.Combine(foreign, "todo.txt"), "keep me");
        var taken = Assert.Throws<ArgumentException>(() => StableDiffusionOnnxExporter.Export(fixture.Pipeline, foreign));
        Assert.Contains("not an earlier output of this kind", taken.Message);
        Assert.Equal(["todo.txt"], Directory.GetFiles(foreign).Select(Path.GetFileName));

        var format = Assert.Throws<ArgumentException>(() => StableDiffusionOnnxExporter.CheckFormats(fixture.Pipeline, [ExportFormat.Safetensors, ExportFormat.Onnx]));
        Assert.Contains("--format onnx", format.Message);
        StableDiffusionOnnxExporter.CheckFormats(fixture.Pipeline, [ExportFormat.Onnx]);
    }
}
