using System.Text.Json.Nodes;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Tests.Pipeline;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static DiffusionPrune.Tests.Cli.CliTests;

namespace DiffusionPrune.Tests.Cli;

/// <summary>
/// <c>dprune export</c> of a Stable Diffusion pipeline folder (a copy of sd-pipeline-small, or a pruned one) to diffusers'
/// ONNX pipeline layout and <c>dprune sample --backend onnx</c> on it, through the real executable.
/// </summary>
public class StableDiffusionOnnxCliTests
{
    [Fact]
    public void Export_of_a_pipeline_writes_the_onnx_stable_diffusion_layout_that_onnx_runtime_opens()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string output = temp.File("onnx-pipeline");

        var (code, stdout, stderr) = Dprune("export", "--model", pipeline, "--output", output);

        Assert.True(code == 0, stderr + stdout);
        Assert.Contains(StableDiffusionOnnxExporter.PipelineClassName, stdout);
        Assert.Contains("MACs per sample", stdout);
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "model_index.json")))!;
        Assert.Equal("OnnxStableDiffusionPipeline", index["_class_name"]!.GetValue<string>());
        foreach (var component in new[] { "text_encoder", "unet", "vae_decoder" })
            Assert.Equal("[\"diffusers\",\"OnnxRuntimeModel\"]", index[component]!.ToJsonString());
        Assert.Equal("[\"diffusers\",\"DDIMScheduler\"]", index["scheduler"]!.ToJsonString());
        Assert.Equal("[\"transformers\",\"CLIPTokenizer\"]", index["tokenizer"]!.ToJsonString());
        Assert.Equal("[null,null]", index["vae_encoder"]!.ToJsonString());
        Assert.Equal("[null,null]", index["safety_checker"]!.ToJsonString());
        foreach (var file in new[] { "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(pipeline, file)), File.ReadAllBytes(Path.Combine(output, file)));
        Assert.Contains("OnnxStableDiffusionPipeline", File.ReadAllText(Path.Combine(output, "README.md")));

        // the interface diffusers' OnnxStableDiffusionPipeline calls each graph with
        (string Folder, string[] Inputs, string[] Outputs)[] expected =
        [
            ("text_encoder", ["input_ids"], ["last_hidden_state"]),
            ("unet", ["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
            ("vae_decoder", ["latent_sample"], ["sample"]),
        ];
        foreach (var (folder, inputs, outputs) in expected)
        {
            using var session = new InferenceSession(Path.Combine(output, folder, "model.onnx"));
            Assert.Equal(inputs, session.InputNames);
            Assert.Equal(outputs, session.OutputNames);
            Assert.True(File.Exists(Path.Combine(output, folder, "config.json")));
        }
        using (var textEncoder = new InferenceSession(Path.Combine(output, "text_encoder", "model.onnx")))
            Assert.Equal(TensorElementType.Int32, textEncoder.InputMetadata["input_ids"].ElementDataType);
        using (var unet = new InferenceSession(Path.Combine(output, "unet", "model.onnx")))
            Assert.Equal(TensorElementType.Float, unet.InputMetadata["timestep"].ElementDataType);

        // a second export replaces the first; safetensors is refused for a pipeline, which already is in that layout
        (code, _, stderr) = Dprune("export", "--model", pipeline, "--output", output, "--format", "onnx");
        Assert.True(code == 0, stderr);
        (code, _, stderr) = Dprune("export", "--model", pipeline, "--output", temp.File("other"), "--format", "safetensors,onnx");
        Assert.Equal(2, code);
        Assert.Contains("--format onnx", stderr);
        Assert.False(Directory.Exists(temp.File("other")));
    }

    private static Image<Rgb24> LoadPng(string path) => Image.Load<Rgb24>(path);

    /// <summary>The largest difference of one colour channel between two PNGs of the same size, in 8-bit levels.</summary>
    private static int MaxLevelDifference(Image<Rgb24> a, Image<Rgb24> b)
    {
        Assert.Equal((a.Width, a.Height), (b.Width, b.Height));
        int worst = 0;
        for (int y = 0; y < a.Height; y++)
            for (int x = 0; x < a.Width; x++)
            {
                var p = a[x, y];
                var q = b[x, y];
                worst = Math.Max(worst, Math.Max(Math.Abs(p.R - q.R), Math.Max(Math.Abs(p.G - q.G), Math.Abs(p.B - q.B))));
            }
        return worst;
    }

    [Fact]
    public void Sample_with_the_onnx_backend_on_an_exported_pruned_pipeline_writes_the_torch_backends_image()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string pruned = temp.File("pruned"), exported = temp.File("pruned-onnx");
        var (code, _, stderr) = Dprune("prune", "--model", pipeline, "--method", "magnitude", "--target-params", "0.2", "--output", pruned);
        Assert.True(code == 0, stderr);
        (code, var stdout, stderr) = Dprune("export", "--model", pruned, "--output", exported);
        Assert.True(code == 0, stderr);
        Assert.Contains("(pruned)", stdout);

        string[] sampling = ["--prompt", "a red cube on a table", "--negative-prompt", "blurry", "--guidance-scale", "7.5", "--steps", "3", "--seed", "3",
            "--scheduler", "euler", "--count", "2"];
        (code, stdout, stderr) = Dprune(["sample", "--model", exported, "--backend", "onnx", "--provider", "cpu", .. sampling, "--output", temp.File("onnx.png")]);
        Assert.True(code == 0, stderr + stdout);
        (code, _, stderr) = Dprune(["sample", "--model", pruned, .. sampling, "--output", temp.File("torch.png")]);
        Assert.True(code == 0, stderr);

        using var onnxImage = LoadPng(temp.File("onnx.png"));
        using var torchImage = LoadPng(temp.File("torch.png"));
        Assert.True(onnxImage.Width * onnxImage.Height >= 2 * 32 * 32, $"{onnxImage.Width} x {onnxImage.Height} cannot hold two 32 x 32 images");
        // the same image up to float error: 8-bit rounding may move a channel by one level
        Assert.InRange(MaxLevelDifference(onnxImage, torchImage), 0, 1);
        // and a picture, not a flat grid two backends would trivially agree on
        var levels = new HashSet<byte>();
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                levels.Add(onnxImage[x, y].R);
        Assert.True(levels.Count > 16, $"the first image has only {levels.Count} red levels");
    }

    [Fact]
    public void Onnx_backend_on_a_folder_that_is_not_an_exported_pipeline_is_refused_in_one_line()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);

        var (code, _, stderr) = Dprune("sample", "--model", pipeline, "--backend", "onnx", "--prompt", "a cat", "--steps", "2", "--output", temp.File("x.png"));

        Assert.Equal(2, code);
        Assert.Contains("dprune export --model", stderr);
        Assert.DoesNotContain("   at ", stderr); // no stack trace
        Assert.False(File.Exists(temp.File("x.png")));

        // an empty folder: neither a pipeline nor a bundle
        Directory.CreateDirectory(temp.File("empty"));
        (code, _, stderr) = Dprune("sample", "--model", temp.File("empty"), "--backend", "onnx", "--prompt", "a cat", "--steps", "2", "--output", temp.File("y.png"));
        Assert.Equal(2, code);
        Assert.StartsWith("error: ", stderr.Trim());
        Assert.DoesNotContain("   at ", stderr);
        Assert.False(File.Exists(temp.File("y.png")));
    }
}
