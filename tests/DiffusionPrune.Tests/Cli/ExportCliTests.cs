using System.Text.Json.Nodes;
using DiffusionPrune.Tests.Export;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Cli;

/// <summary><c>dprune export</c> through the real executable.</summary>
public class ExportCliTests
{
    [Fact]
    public void Export_writes_a_bundle_whose_onnx_runs_in_onnx_runtime()
    {
        using var temp = Fixtures.Temp();
        string bundle = temp.File("bundle");
        var (code, stdout, stderr) = CliTests.Dprune("export", "--model", Fixtures.Diffusers("dit-small", "model"), "--format", "safetensors,onnx", "--output", bundle);
        Assert.True(code == 0, stderr);
        Assert.Contains("299,488 parameters", stdout);
        foreach (var file in new[] { "config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "model.onnx", "onnx_model.json", "README.md" })
            Assert.True(File.Exists(Path.Combine(bundle, file)), $"{file} missing");
        Assert.Equal(299488, JsonNode.Parse(File.ReadAllText(Path.Combine(bundle, "onnx_model.json")))!["parameters"]!.GetValue<long>());

        // the ONNX loads in ORT and reproduces diffusers' own outputs for the fixture inputs
        using var runner = new OnnxTestRunner(Path.Combine(bundle, "model.onnx"));
        Assert.Equal(new[] { "sample", "timestep", "class_labels" }, runner.InputNames);
        using var io = DiffusionPrune.Formats.SafetensorsFile.Open(Fixtures.Diffusers("dit-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        var output = runner.Run(io.ReadFloat("sample"), io.Read("timestep"), io.Read("class_labels"));
        Assert.True(Fixtures.RelativeError(output, io.ReadFloat("output")) <= 1e-4);
    }

    [Theory]
    [InlineData("tflite")]
    [InlineData("")]
    public void A_bad_format_exits_2_and_writes_nothing(string format)
    {
        using var temp = Fixtures.Temp();
        string bundle = temp.File("bundle");
        var (code, stdout, stderr) = CliTests.Dprune("export", "--model", Fixtures.Diffusers("unet2d-small", "model"), "--format", format, "--output", bundle);
        Assert.Equal(2, code);
        Assert.StartsWith("error:", stderr.Trim());
        Assert.Contains("format", stderr);
        Assert.Equal("", stdout.Trim());
        Assert.False(Directory.Exists(bundle));
    }
}
