using System.Text.Json.Nodes;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Tests.Inference.Onnx;
using Xunit.Abstractions;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;

namespace DiffusionPrune.Tests.Cli;

/// <summary>The default mnist-unet exported once (safetensors + onnx) for the tests of this class.</summary>
public sealed class MnistUNetBundle : IDisposable
{
    private readonly TempFolder _temp = Fixtures.Temp();

    public string Path { get; }

    public MnistUNetBundle() =>
        Path = ExportedBundleParityTests.Export(ExportedBundleParityTests.MnistUNet, _temp.File("mnist-unet"), ExportFormat.Safetensors, ExportFormat.Onnx);

    public void Dispose() => _temp.Dispose();
}

/// <summary>
/// Real exported bundles through the programs users run: <c>dprune sample/eval --backend onnx</c> against the torch
/// backend on the same bundle (it carries the diffusers files too), and samples/OnDeviceDemo.
/// </summary>
public class ExportedBundleCliTests(MnistUNetBundle mnist, ITestOutputHelper output) : IClassFixture<MnistUNetBundle>
{
    [Fact]
    public void Sample_on_the_onnx_backend_writes_the_trajectory_torch_writes_from_the_same_seed()
    {
        using var temp = Fixtures.Temp();
        string bundle = ExportedBundleParityTests.Export(UNetFixture, temp.File("bundle"), ExportFormat.Safetensors, ExportFormat.Onnx);
        string[] common = ["sample", "--model", bundle, "--scheduler", "ddim", "--steps", "4", "--seed", "5", "--count", "3", "--device", "cpu"];

        var (code, _, stderr) = CliTests.Dprune([.. common, "--output", temp.File("torch.safetensors")]);
        Assert.True(code == 0, stderr);
        (code, var stdout, stderr) = CliTests.Dprune([.. common, "--backend", "onnx", "--provider", "cpu", "--output", temp.File("onnx.safetensors")]);
        Assert.True(code == 0, stderr);
        Assert.Contains("ONNX Runtime execution provider: CPU", stderr);
        Assert.Contains("wrote", stdout);

        using var torchFile = SafetensorsFile.Open(temp.File("torch.safetensors"));
        using var onnxFile = SafetensorsFile.Open(temp.File("onnx.safetensors"));
        using var expected = torchFile.Read("trajectory");
        using var actual = onnxFile.Read("trajectory");
        Assert.Equal(new long[] { 4, 3, 1, 32, 32 }, actual.shape);
        double error = Fixtures.RelativeError(actual, expected);
        output.WriteLine($"dprune sample, unet2d-small bundle, DDIM 4 steps x 3 samples: onnx vs torch trajectory {error:E2}");
        Assert.True(error <= 1e-3, $"trajectory error {error:E3}");
    }

    [Fact]
    public void Eval_on_the_onnx_backend_reports_the_fid_proxy_torch_reports_and_names_the_runtime()
    {
        using var temp = Fixtures.Temp();
        string[] common = ["eval", "--model", mnist.Path, "--samples", "16", "--steps", "3", "--batch", "16", "--device", "cpu"];

        var (code, _, stderr) = CliTests.Dprune([.. common, "--output", temp.File("torch.json")]);
        Assert.True(code == 0, stderr);
        (code, var stdout, stderr) = CliTests.Dprune([.. common, "--backend", "onnx", "--provider", "cpu", "--output", temp.File("onnx.json")]);
        Assert.True(code == 0, stderr);
        Assert.Contains("ONNX Runtime execution provider: CPU", stderr);
        Assert.Matches(@"runtime\s+onnx \(CPU\)", stdout);

        var torchReport = JsonNode.Parse(File.ReadAllText(temp.File("torch.json")))!;
        var onnxReport = JsonNode.Parse(File.ReadAllText(temp.File("onnx.json")))!;
        Assert.Equal("torch (cpu)", torchReport["runtime"]!.GetValue<string>());
        Assert.Equal("onnx (CPU)", onnxReport["runtime"]!.GetValue<string>());
        Assert.Equal("UNet2DModel", onnxReport["class"]!.GetValue<string>());
        Assert.Equal(torchReport["parameters"]!.GetValue<long>(), onnxReport["parameters"]!.GetValue<long>());
        Assert.Equal(torchReport["macs"]!.GetValue<long>(), onnxReport["macs"]!.GetValue<long>());
        foreach (var metric in new[] { "fid_proxy.value", "fid_proxy.lower", "fid_proxy.upper", "kid.mean", "precision", "recall" })
        {
            double Read(JsonNode report) => metric.Split('.').Aggregate(report, (node, key) => node[key]!).GetValue<double>();
            double torchValue = Read(torchReport), onnxValue = Read(onnxReport);
            double difference = Math.Abs(onnxValue - torchValue) / Math.Max(1, Math.Abs(torchValue));
            output.WriteLine($"dprune eval mnist-unet 16 x 3: {metric} torch {torchValue:G6}, onnx {onnxValue:G6}, relative difference {difference:E2}");
            Assert.True(difference <= 1e-3, $"{metric}: torch {torchValue}, onnx {onnxValue}");
        }
    }

    [Fact]
    public void The_demo_samples_the_exported_default_and_prints_provider_and_latency()
    {
        using var temp = Fixtures.Temp();
        string grid = temp.File("grid.png");

        var (code, stdout, stderr) = OnDeviceDemoTests.Demo(mnist.Path, "--count", "2", "--steps", "2", "--provider", "cpu", "--output", grid);

        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("ONNX Runtime execution provider: CPU", stdout);
        Assert.Matches(@"provider CPU: mean \d+(\.\d+)? ms per image", stdout);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(grid)[..4]);
    }

    [Fact]
    public void The_demo_samples_a_class_conditional_bundle_with_guidance()
    {
        using var temp = Fixtures.Temp();
        string bundle = ExportedBundleParityTests.Export(TinyImageDiT.WriteTo(temp.File("tiny-dit")), temp.File("bundle"));
        string grid = temp.File("grid.png");

        var (code, stdout, stderr) = OnDeviceDemoTests.Demo(bundle, "--count", "4", "--steps", "3", "--guidance", "3", "--batch", "2",
            "--provider", "cpu", "--output", grid);

        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("ONNX Runtime execution provider: CPU", stdout);
        Assert.Contains("images 3-4/4: ", stdout);
        Assert.Matches(@"provider CPU: mean \d+(\.\d+)? ms per image", stdout);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(grid)[..4]);
    }
}
