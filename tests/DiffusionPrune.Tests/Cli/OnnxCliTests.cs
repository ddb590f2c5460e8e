using DiffusionPrune.Tests.Inference.Onnx;

namespace DiffusionPrune.Tests.Cli;

/// <summary><c>--backend onnx --provider ...</c> on dprune sample and eval.</summary>
public class OnnxCliTests
{
    [Fact]
    public void Sample_with_the_onnx_backend_on_a_diffusers_folder_exits_2_and_says_to_export()
    {
        var (code, stdout, stderr) = CliTests.Dprune("sample", "--model", Fixtures.Diffusers("unet2d-small", "model"), "--backend", "onnx",
            "--steps", "2", "--count", "1", "--output", Path.Combine(Path.GetTempPath(), "never-written.png"));
        Assert.Equal(2, code);
        Assert.Contains("model.onnx", stderr);
        Assert.Contains("dprune export", stderr);
        Assert.DoesNotContain("Exception", stderr);
        Assert.Equal("", stdout.Trim());
    }

    [Fact]
    public void Eval_with_the_onnx_backend_on_a_folder_without_model_onnx_exits_2()
    {
        using var temp = Fixtures.Temp();
        var (code, _, stderr) = CliTests.Dprune("eval", "--model", temp.Path, "--backend", "onnx", "--samples", "2");
        Assert.Equal(2, code);
        Assert.Contains("dprune export", stderr);
    }

    [Fact]
    public void Sample_with_the_onnx_backend_writes_a_grid_and_prints_the_provider_that_ran()
    {
        using var temp = Fixtures.Temp();
        string bundle = new TinyOnnxBundle().WriteTo(temp.File("bundle"));
        var (code, stdout, stderr) = CliTests.Dprune("sample", "--model", bundle, "--backend", "onnx", "--provider", "cuda",
            "--steps", "3", "--count", "4", "--output", temp.File("grid.png"));
        Assert.True(code == 0, stderr);
        Assert.Contains("ONNX Runtime execution provider: ", stderr);
        Assert.Contains("wrote", stdout);
        Assert.True(File.Exists(temp.File("grid.png")));
    }

    [Fact]
    public void An_unknown_provider_or_backend_is_a_user_error()
    {
        using var temp = Fixtures.Temp();
        string bundle = new TinyOnnxBundle().WriteTo(temp.File("bundle"));
        var (code, _, stderr) = CliTests.Dprune("sample", "--model", bundle, "--backend", "onnx", "--provider", "tpu", "--output", temp.File("g.png"));
        Assert.Equal(2, code);
        Assert.Contains("auto, cpu, directml, cuda", stderr);
        (code, _, stderr) = CliTests.Dprune("sample", "--model", bundle, "--backend", "tensorflow", "--output", temp.File("g.png"));
        Assert.Equal(2, code);
        Assert.Contains("torch, onnx", stderr);
    }
}
