using System.Diagnostics;
using System.Reflection;

namespace DiffusionPrune.Tests.Inference.Onnx;

/// <summary>samples/OnDeviceDemo, run as a user runs it (its own output folder, ONNX Runtime only) on a hand-built bundle.</summary>
public class OnDeviceDemoTests
{
    private static string DemoDll => typeof(OnDeviceDemoTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
        .Single(a => a.Key == "OnDeviceDemoDll").Value!;

    internal static (int exitCode, string stdout, string stderr) Demo(params string[] args)
    {
        Assert.True(File.Exists(DemoDll), $"The demo was not built at {DemoDll} (the test project builds it first).");
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(DemoDll);
        foreach (var a in args) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3))) { process.Kill(true); throw new TimeoutException("OnDeviceDemo did not finish"); }
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void The_demo_samples_a_bundle_writes_a_png_grid_and_prints_provider_and_latency()
    {
        using var temp = Fixtures.Temp();
        string bundle = new TinyOnnxBundle { NumClasses = 4, NullClass = 4, SigmaChannels = 1 }.WriteTo(temp.File("bundle"));
        string grid = temp.File("out/grid.png");

        var (code, stdout, stderr) = Demo(bundle, "--count", "5", "--steps", "4", "--seed", "3", "--provider", "directml",
            "--guidance", "2", "--batch", "2", "--output", grid);

        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("ONNX Runtime execution provider: ", stdout);
        Assert.Contains("images 1-2/5: ", stdout);
        Assert.Contains("image 5/5: ", stdout);
        Assert.Contains("ms per image", stdout);
        Assert.Contains($"wrote {grid}", stdout);
        var png = File.ReadAllBytes(grid);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
    }

    [Fact]
    public void The_demo_refuses_a_folder_that_is_not_a_bundle_with_exit_code_2()
    {
        using var temp = Fixtures.Temp();
        var (code, stdout, stderr) = Demo(temp.Path, "--output", temp.File("grid.png"));
        Assert.Equal(2, code);
        Assert.Contains("dprune export", stderr);
        Assert.DoesNotContain("Exception", stderr);
        Assert.False(File.Exists(temp.File("grid.png")));
    }
}
