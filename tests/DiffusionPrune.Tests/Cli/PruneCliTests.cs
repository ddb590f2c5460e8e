using System.Text.Json.Nodes;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;

namespace DiffusionPrune.Tests.Cli;

/// <summary><c>dprune prune</c> end to end on the fixture U-Net.</summary>
public class PruneCliTests
{
    /// <summary>A tiny U-Net model folder (random weights) so EcoDiff runs in seconds through the real executable.</summary>
    internal static string TinyModel(TempFolder temp)
    {
        const string config = """
            {"_class_name": "UNet2DModel", "sample_size": 16, "in_channels": 1, "out_channels": 1,
             "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
            """;
        TorchSharp.torch.manual_seed(3);
        using var model = ModelFamilies.Create(ConfigJson.Parse(config));
        string folder = temp.File("tiny");
        DiffusersModelLoader.Save(model, folder);
        File.Copy(Fixtures.Diffusers("unet2d-small", "scheduler_config.json"), Path.Combine(folder, "scheduler_config.json"));
        return folder;
    }

    [Fact]
    public void Piped_output_is_a_log_of_whole_lines_and_json_prints_one_summary_on_stdout()
    {
        using var temp = Fixtures.Temp();
        string model = TinyModel(temp);
        // Redirected, as under `| cat` or in CI: one line per step (3 iterations), no carriage returns.
        var (code, stdout, stderr) = CliTests.Dprune("prune", "--model", model, "--method", "ecodiff", "--target-params", "0.1",
            "--steps", "2", "--iterations", "3", "--calibration", "2", "--output", temp.File("a"));
        Assert.True(code == 0, stderr);
        Assert.DoesNotContain('\r', stdout + stderr);
        var lines = stderr.Split('\n');
        foreach (var i in new[] { 1, 2, 3 }) Assert.Contains(lines, l => l.StartsWith($"iteration {i}/3 loss", StringComparison.Ordinal));
        Assert.DoesNotContain("NNPACK", stdout + stderr);
        Assert.Contains("ecodiff: removed", stdout);

        // --json: stdout is exactly one JSON object; the human lines went to stderr.
        (code, stdout, stderr) = CliTests.Dprune("prune", "--model", model, "--method", "magnitude", "--target-params", "0.1",
            "--output", temp.File("b"), "--json");
        Assert.True(code == 0, stderr);
        var summary = JsonNode.Parse(stdout)!.AsObject();
        Assert.Equal("magnitude", summary["method"]!.GetValue<string>());
        Assert.Equal(Path.GetFullPath(temp.File("b")), summary["output_path"]!.GetValue<string>());
        Assert.Contains("magnitude: removed", stderr);

        // --quiet: nothing at all on success.
        (code, stdout, stderr) = CliTests.Dprune("prune", "--model", model, "--method", "ecodiff", "--target-params", "0.1",
            "--steps", "2", "--iterations", "2", "--calibration", "2", "--output", temp.File("c"), "--quiet");
        Assert.True(code == 0, stderr);
        Assert.Equal("", stdout + stderr);
    }

    [Fact]
    public void EcoDiff_prune_runs_end_to_end_and_reports_its_settings()
    {
        using var temp = Fixtures.Temp();
        string output = temp.File("pruned");
        var (code, _, stderr) = CliTests.Dprune("prune", "--model", TinyModel(temp), "--method", "ecodiff", "--target-params", "0.1",
            "--steps", "2", "--iterations", "3", "--calibration", "2", "--output", output);
        Assert.True(code == 0, stderr);
        Assert.Contains("iteration 3/3", stderr);
        var report = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.PruneReport)))!.AsObject();
        Assert.Equal("ecodiff", report["method"]!.GetValue<string>());
        Assert.Equal(3, report["settings"]!["iterations"]!.GetValue<int>());
        Assert.True(report["settings"]!["checkpointing"]!.GetValue<bool>());
        Assert.True(report["achieved_removed_params"]!.GetValue<double>() >= 0.1);
        using var pruned = ModelFamilies.Load(output);
        Assert.Equal(report["params_after"]!.GetValue<long>(), pruned.ParameterCount());
    }

    [Fact]
    public void EcoDiff_calibrates_a_class_conditional_model_with_the_guidance_it_is_given()
    {
        using var temp = Fixtures.Temp();
        string output = temp.File("pruned");
        var (code, _, stderr) = CliTests.Dprune("prune", "--model", Fixtures.Diffusers("dit-small", "model"),
            "--scheduler-config", Fixtures.Diffusers("unet2d-small", "scheduler_config.json"),
            "--method", "ecodiff", "--target-params", "0.1", "--guidance-scale", "2.5",
            "--steps", "2", "--iterations", "2", "--calibration", "2", "--output", output);
        Assert.True(code == 0, stderr);
        var report = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.PruneReport)))!.AsObject();
        Assert.Equal(2.5, report["settings"]!["guidance_scale"]!.GetValue<double>());

        // An unconditional U-Net has no null class to guide with: a one-line error, no folder.
        (code, _, stderr) = CliTests.Dprune("prune", "--model", TinyModel(temp), "--method", "ecodiff", "--target-params", "0.1",
            "--guidance-scale", "3", "--steps", "2", "--iterations", "2", "--calibration", "2", "--output", temp.File("p"));
        Assert.Equal(2, code);
        Assert.Contains("class-conditional", stderr);
        Assert.False(Directory.Exists(temp.File("p")));
    }

    [Theory]
    [InlineData("magnitude", "0.2")]
    [InlineData("random", "0.3")]
    public void Prune_writes_a_smaller_model_with_its_report_and_plan(string method, string target)
    {
        using var temp = Fixtures.Temp();
        string output = temp.File("pruned");
        var (code, stdout, stderr) = CliTests.Dprune("prune", "--model", Fixtures.Diffusers("unet2d-small", "model"),
            "--scheduler-config", Fixtures.Diffusers("unet2d-small", "scheduler_config.json"),
            "--method", method, "--target-params", target, "--steps", "2", "--iterations", "2", "--calibration", "2", "--output", output);
        Assert.True(code == 0, stderr);
        Assert.Contains(method, stdout);

        var report = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.PruneReport)))!.AsObject();
        Assert.Equal(method, report["method"]!.GetValue<string>());
        double achieved = report["achieved_removed_params"]!.GetValue<double>();
        Assert.InRange(achieved, double.Parse(target, System.Globalization.CultureInfo.InvariantCulture), 0.5);
        long before = report["params_before"]!.GetValue<long>(), after = report["params_after"]!.GetValue<long>();
        Assert.Equal(1623169, before);
        Assert.True(report["macs_after"]!.GetValue<long>() < report["macs_before"]!.GetValue<long>());
        Assert.NotEmpty(report["kept_fraction_per_layer"]!.AsObject());
        Assert.True(File.Exists(Path.Combine(output, ModelFolder.PrunePlan)));
        Assert.True(File.Exists(Path.Combine(output, "scheduler_config.json")));

        using var pruned = ModelFamilies.Load(output);
        Assert.Equal(after, pruned.ParameterCount());
        Assert.False(pruned.Structure.IsEmpty);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("1.5")]
    [InlineData("0.99")]
    public void Impossible_targets_are_clear_errors(string target)
    {
        using var temp = Fixtures.Temp();
        var (code, _, stderr) = CliTests.Dprune("prune", "--model", Fixtures.Diffusers("unet2d-small", "model"),
            "--scheduler-config", Fixtures.Diffusers("unet2d-small", "scheduler_config.json"),
            "--method", "random", "--target-params", target, "--output", temp.File("p"));
        Assert.Equal(2, code);
        Assert.StartsWith("error:", stderr.Trim().Split('\n')[^1]);
        Assert.Contains("target", stderr);
        Assert.False(Directory.Exists(temp.File("p")));
    }

    [Fact]
    public void Taylor_calibrates_on_a_folder_of_the_users_images_and_data_free_methods_refuse_data()
    {
        using var temp = Fixtures.Temp();
        string images = temp.File("images");
        Directory.CreateDirectory(images);
        for (int i = 0; i < 3; i++)
        {
            using var image = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24>(20, 30, new SixLabors.ImageSharp.PixelFormats.Rgb24((byte)(60 * i), 90, 200));
            SixLabors.ImageSharp.ImageExtensions.SaveAsPng(image, Path.Combine(images, $"{i}.png"));
        }
        string model = TinyModel(temp);
        var (code, stdout, stderr) = CliTests.Dprune("prune", "--model", model, "--method", "taylor", "--target-params", "0.1",
            "--calibration", "3", "--data", images, "--output", temp.File("t"));
        Assert.True(code == 0, stderr);
        Assert.Contains($"calibration data: images in {images} (3 images, grey, 16x16)", stdout + stderr);
        string report = File.ReadAllText(Path.Combine(temp.File("t"), ModelFolder.PruneReport));
        Assert.Contains("image folder (3 images)", report);
        Assert.DoesNotContain(images, report); // no local paths in reports

        (code, _, stderr) = CliTests.Dprune("prune", "--model", model, "--method", "magnitude", "--target-params", "0.1",
            "--data", images, "--output", temp.File("m"));
        Assert.Equal(2, code);
        Assert.Contains("--data is for methods that calibrate on images (learnable-depth, taylor); magnitude is data-free", stderr);
    }

    [Fact]
    public async Task Ctrl_c_stops_a_prune_at_the_next_iteration_and_leaves_no_output_folder()
    {
        using var temp = Fixtures.Temp();
        string model = TinyModel(temp);
        string output = temp.File("interrupted");
        var info = CliTests.DprunStartInfo("prune", "--model", model, "--method", "ecodiff", "--target-params", "0.1",
            "--steps", "2", "--iterations", "500", "--calibration", "2", "--output", output);
        // A process started in the background (a CI runner's `cmd &`) has SIGINT ignored, its children inherit that, and
        // .NET then rightly leaves Ctrl+C alone. Give dprune a default SIGINT, as a terminal's foreground job has
        // (coreutils env); that is the situation this test is about.
        info.ArgumentList.Insert(0, info.FileName);
        info.ArgumentList.Insert(0, "--default-signal=INT");
        info.FileName = "env";
        using var process = System.Diagnostics.Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var lines = new List<string>();
        string? line;
        while ((line = process.StandardError.ReadLine()) is not null)
        {
            lines.Add(line);
            if (line.StartsWith("iteration 1/500", StringComparison.Ordinal)) break; // in a log, the first step is printed, then every 10%
        }
        Assert.True(line is not null, string.Join("\n", lines));
        using (var kill = System.Diagnostics.Process.Start("kill", ["-INT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) kill.WaitForExit();
        string rest = process.StandardError.ReadToEnd();
        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(2)), "dprune did not stop after SIGINT");
        Assert.True(process.ExitCode == 130, $"exit {process.ExitCode}: {rest}");
        Assert.Contains("cancelled", rest);
        Assert.DoesNotContain("iteration 500/500", rest);
        Assert.False(Directory.Exists(output));
        Assert.DoesNotContain(Directory.EnumerateFileSystemEntries(temp.Path), e => Path.GetFileName(e).StartsWith(".dprune-partial-", StringComparison.Ordinal));
        await stdout;
    }
}
