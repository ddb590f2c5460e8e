using System.Diagnostics;
using DiffusionPrune.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Cli;

/// <summary>The dprune contract, exercised through the real executable (as batch tooling uses it).</summary>
public class CliTests
{
    internal static (int exitCode, string stdout, string stderr) Dprune(params string[] args) => DprunWith(new Dictionary<string, string>(), args);

    /// <summary>Runs dprune with extra environment variables.</summary>
    internal static (int exitCode, string stdout, string stderr) DprunWith(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var info = DprunStartInfo(args);
        foreach (var (name, value) in environment) info.Environment[name] = value;
        using var process = Process.Start(info)!;
        return Finish(process, HangTimeout);
    }

    /// <summary>
    /// How long a dprune run may take before a test calls it hung. It catches hangs, not slowness: a 60-step
    /// distillation of the distillation tests took over 3 minutes beside two busy benchmark processes on 2 cores, where
    /// the earlier 3-minute limit failed it.
    /// </summary>
    internal static readonly TimeSpan HangTimeout = TimeSpan.FromMinutes(10);

    /// <summary>How to start the dprune built beside the tests (as <c>dotnet dprune.dll ARGS</c>), output redirected.</summary>
    internal static ProcessStartInfo DprunStartInfo(params string[] args)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dprune.dll"));
        foreach (var a in args) info.ArgumentList.Add(a);
        return info;
    }

    /// <summary>Waits for a started dprune and returns its exit code and output; kills it after <paramref name="timeout"/>.</summary>
    internal static (int exitCode, string stdout, string stderr) Finish(Process process, TimeSpan timeout)
    {
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout)) { process.Kill(true); throw new TimeoutException("dprune did not finish"); }
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void Forward_writes_the_diffusers_output_for_the_dit_fixture()
    {
        using var temp = Fixtures.Temp();
        var (code, _, stderr) = Dprune("forward", "--model", Fixtures.Diffusers("dit-small", "model"),
            "--input", Fixtures.Diffusers("dit-small", "io.safetensors"), "--output", temp.File("out.safetensors"), "--device", "cpu");
        Assert.True(code == 0, stderr);
        using var output = SafetensorsFile.Open(temp.File("out.safetensors"));
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("dit-small", "io.safetensors"));
        Assert.Equal(SafetensorsDType.F32, output.Entries["output"].DType);
        using var actual = output.Read("output");
        using var expected = io.ReadFloat("output");
        Assert.True(Fixtures.RelativeError(actual, expected) <= 1e-4);
    }

    [Fact]
    public void Sample_with_given_noise_reproduces_the_ddim_trajectory()
    {
        using var temp = Fixtures.Temp();
        var (code, _, stderr) = Dprune("sample", "--model", Fixtures.Diffusers("unet2d-small", "model"),
            "--scheduler-config", Fixtures.Diffusers("unet2d-small", "scheduler_config.json"), "--steps", "10",
            "--noise", Fixtures.Diffusers("unet2d-small", "io.safetensors"), "--noise-key", "ddim_noise",
            "--output", temp.File("traj.safetensors"));
        Assert.True(code == 0, stderr);
        using var output = SafetensorsFile.Open(temp.File("traj.safetensors"));
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("unet2d-small", "io.safetensors"));
        using var trajectory = output.Read("trajectory");
        using var expected = io.ReadFloat("ddim_trajectory");
        Assert.Equal(new long[] { 10, 2, 1, 32, 32 }, trajectory.shape);
        Assert.True(Fixtures.RelativeError(trajectory, expected) <= 1e-3);
        using var final = output.Read("final");
        using var last = trajectory[-1];
        Assert.True(Fixtures.RelativeError(final, last) == 0);
    }

    [Fact]
    public void Sample_to_png_writes_an_image_grid_from_seeded_noise()
    {
        using var temp = Fixtures.Temp();
        var (code, _, stderr) = Dprune("sample", "--model", Fixtures.Diffusers("dit-small", "model"),
            "--scheduler-config", Fixtures.Diffusers("unet2d-small", "scheduler_config.json"), "--steps", "2",
            "--seed", "1", "--count", "3", "--labels", "1,2", "--guidance-scale", "2", "--output", temp.File("grid.png"));
        // dit-small has 4 channels: not an image; the command must say so rather than write garbage.
        Assert.Equal(2, code);
        Assert.Contains("channels", stderr);

        (code, _, stderr) = Dprune("sample", "--model", Fixtures.Diffusers("unet2d-small", "model"),
            "--scheduler-config", Fixtures.Diffusers("unet2d-small", "scheduler_config.json"), "--steps", "2",
            "--seed", "1", "--count", "4", "--output", temp.File("grid.png"));
        Assert.True(code == 0, stderr);
        var bytes = File.ReadAllBytes(temp.File("grid.png"));
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, bytes[..4]);
    }

    [Fact]
    public void Info_reports_parameters_and_macs()
    {
        var (code, stdout, stderr) = Dprune("info", "--model", Fixtures.Diffusers("unet2d-small", "model"));
        Assert.True(code == 0, stderr);
        Assert.Contains("1,623,169", stdout);
        Assert.Contains("MACs", stdout);
        Assert.Contains("down_blocks.1", stdout);
        // the resource estimate from the config alone comes first
        Assert.Contains("from the config alone", stdout);
        Assert.Contains("training, batch 16", stdout);
        Assert.DoesNotContain("over the limit", stdout);
    }

    [Fact]
    public void Compare_needs_two_to_six_models_and_says_so_in_one_line()
    {
        string model = Path.Combine(Fixtures.RepoRoot, "samples", "models", "mnist-unet");
        using var temp = Fixtures.Temp();
        var (code, _, stderr) = Dprune("compare", "--models", model, "--output", temp.File("c"));
        Assert.Equal(2, code);
        Assert.Contains("Compare 2 to 6 models (the first is the reference), not 1.", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        (code, _, stderr) = Dprune("compare", "--models", model, model, "--output", temp.File("c"));
        Assert.Equal(2, code);
        Assert.Contains("listed twice", stderr);
        Assert.False(Directory.Exists(temp.File("c")));
    }

    [Fact]
    public void Max_memory_refuses_a_job_whose_estimate_is_above_it_in_one_line_before_loading()
    {
        string model = Fixtures.Diffusers("unet2d-small", "model");
        var (code, stdout, stderr) = Dprune("--max-memory", "2M", "info", "--model", model);
        Assert.Equal(2, code);
        Assert.Contains("over the limit", stdout); // the estimate is still shown, then the load is refused
        Assert.Contains("more than the 2.00 MiB limit (--max-memory); nothing was allocated", stderr);
        Assert.Single(stderr.Trim().Split('\n'));

        using var temp = Fixtures.Temp();
        (code, _, stderr) = Dprune("sample", "--model", model, "--max-memory", "6.3M", "--steps", "2", "--count", "64", "--output", temp.File("grid.png"));
        Assert.Equal(2, code);
        Assert.Contains("inference at batch 64 needs about", stderr);
        Assert.False(File.Exists(temp.File("grid.png")));

        (code, _, stderr) = Dprune("prune", "--model", model, "--method", "magnitude", "--target-params", "0.2", "--max-memory", "1k", "--output", temp.File("pruned"));
        Assert.Equal(2, code);
        Assert.Contains("pruning with magnitude", stderr);
        Assert.False(Directory.Exists(temp.File("pruned")));

        (code, _, stderr) = Dprune("--max-memory", "lots", "info", "--model", model);
        Assert.Equal(2, code);
        Assert.Contains("'lots' is not a memory size", stderr);
    }

    [Fact]
    public void User_errors_exit_nonzero_with_a_message_on_stderr()
    {
        var (code, stdout, stderr) = Dprune("forward", "--model", "/no/such/model", "--input", "x.safetensors", "--output", "y.safetensors");
        Assert.Equal(2, code);
        Assert.Contains("No model folder", stderr);
        Assert.DoesNotContain("Exception", stderr);
        Assert.Equal("", stdout.Trim());

        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("bad.safetensors"), "not a safetensors file");
        (code, _, stderr) = Dprune("forward", "--model", Fixtures.Diffusers("unet2d-small", "model"),
            "--input", temp.File("bad.safetensors"), "--output", temp.File("o.safetensors"));
        Assert.Equal(2, code);
        Assert.StartsWith("error:", stderr.Trim());
    }
}
