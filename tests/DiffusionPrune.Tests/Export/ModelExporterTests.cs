using System.Text.Json.Nodes;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Metrics;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Export;

/// <summary>The export bundle: files per format, onnx_model.json, the model card and its copied metrics.</summary>
public class ModelExporterTests
{
    [Fact]
    public void A_pruned_model_exports_to_both_formats_with_its_metrics_in_the_card()
    {
        using var temp = Fixtures.Temp();
        // a model as our pipeline leaves it: pruned, with prune_report.json, prune_plan.json, scheduler_config.json and an eval report
        string pruned = temp.File("pruned");
        var report = PruneRunner.Run(new PruneRequest
        {
            ModelPath = UNetFixture,
            Method = "magnitude",
            TargetParams = 0.2,
            OutputPath = pruned,
            SchedulerConfigPath = Fixtures.Diffusers("unet2d-small", "scheduler_config.json"),
            Steps = 2,
            Calibration = 2,
        }, CPU);
        new EvalReport(pruned, UNet2DConfig.ClassName, report.ParametersAfter, report.MacsAfter, 500, 25, "ddim", 1.0, 0,
            new FidResult(12.345, 11.5, 13.25, 500), new KidResult(0.01234, 0.00321, 500, 50), new PrecisionRecallResult(0.71, 0.64, 5),
            null, 0.9123, 24.5, 3.2, 60).Save(Path.Combine(pruned, "eval.json"));

        string bundle = temp.File("bundle");
        var result = ModelExporter.Export(new ExportRequest
        {
            ModelPath = pruned,
            OutputPath = bundle,
            Formats = ModelExporter.ParseFormats("safetensors,onnx"),
            ExportedAt = new DateTimeOffset(2025, 3, 4, 5, 6, 7, TimeSpan.Zero),
        });

        foreach (var file in new[] { "config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "model.onnx", "onnx_model.json", "README.md" })
        {
            Assert.True(File.Exists(Path.Combine(bundle, file)), $"{file} missing");
            Assert.Contains(file, result.Files);
        }
        Assert.Equal(File.ReadAllText(Path.Combine(pruned, "scheduler_config.json")), File.ReadAllText(Path.Combine(bundle, "scheduler_config.json")));

        // the diffusers files reload as the same pruned model
        using var reloaded = ModelFamilies.Load(bundle);
        Assert.False(reloaded.Structure.IsEmpty);
        Assert.Equal(report.ParametersAfter, reloaded.ParameterCount());
        Assert.Equal(report.ParametersAfter, result.Parameters);

        var meta = JsonNode.Parse(File.ReadAllText(Path.Combine(bundle, "onnx_model.json")))!.AsObject();
        Assert.Equal(17, meta["opset"]!.GetValue<int>());
        Assert.Equal(new[] { "sample", "timestep" }, meta["inputs"]!.AsArray().Select(i => i!["name"]!.GetValue<string>()));
        Assert.Equal("out_sample", meta["outputs"]![0]!["name"]!.GetValue<string>());
        Assert.Equal("batch", meta["inputs"]![0]!["shape"]![0]!.GetValue<string>());
        Assert.Equal("int64", meta["inputs"]![1]!["dtype"]!.GetValue<string>());
        Assert.Equal(new[] { 32, 32 }, meta["sample_size"]!.AsArray().Select(v => v!.GetValue<int>()));
        Assert.Equal(1, meta["in_channels"]!.GetValue<int>());
        Assert.Equal(1, meta["out_channels"]!.GetValue<int>());
        Assert.False(meta["learned_sigma"]!.GetValue<bool>());
        Assert.Null(meta["num_classes"]);
        Assert.Null(meta["null_class"]);
        Assert.Equal(report.ParametersAfter, meta["parameters"]!.GetValue<long>());
        Assert.Equal(report.MacsAfter, meta["macs"]!.GetValue<long>());
        Assert.True(meta["pruned"]!.GetValue<bool>());

        string card = File.ReadAllText(Path.Combine(bundle, "README.md"));
        Assert.Contains("UNet2DModel", card);
        Assert.Contains("2025-03-04", card);
        Assert.Contains(report.ParametersAfter.ToString("N0", System.Globalization.CultureInfo.InvariantCulture), card);
        Assert.Contains(report.MacsAfter.ToString("N0", System.Globalization.CultureInfo.InvariantCulture), card);
        Assert.Contains("from `pruned (weights sha256 ", card); // the source by name and hash
        Assert.Contains("magnitude", card);
        Assert.Contains("12.345 [11.500, 13.250]", card);
        Assert.Contains("0.9123", card);

        // What a user hands on names no folder of the exporting machine: not the temp folder, not the fixtures' folder.
        foreach (var file in Directory.EnumerateFiles(bundle).Append(Path.Combine(pruned, ModelFolder.PruneReport)).Append(Path.Combine(pruned, "eval.json")))
        {
            if (Path.GetExtension(file) is ".safetensors" or ".onnx") continue;
            string text = File.ReadAllText(file);
            foreach (var local in new[] { temp.Path, Fixtures.RepoRoot, Path.GetTempPath().TrimEnd('/'), Environment.GetFolderPath(Environment.SpecialFolder.UserProfile) })
                if (local.Length > 1) Assert.False(text.Contains(local, StringComparison.Ordinal), $"{Path.GetFileName(file)} contains the local path {local}");
        }
        string weightsHash = DiffusionPrune.Formats.SourceIdentity.ShortHash(Path.Combine(pruned, "diffusion_pytorch_model.safetensors"));
        Assert.Contains(weightsHash, card);
        using (var weights = DiffusionPrune.Formats.SafetensorsFile.Open(Path.Combine(bundle, "diffusion_pytorch_model.safetensors")))
            Assert.Equal($"pruned (weights sha256 {weightsHash})", weights.Metadata["dprune_exported_from"]);
        var pruneJson = JsonNode.Parse(File.ReadAllText(Path.Combine(pruned, ModelFolder.PruneReport)))!;
        Assert.Equal("pruned", pruneJson["output"]!.GetValue<string>());
    }

    [Fact]
    public void An_onnx_only_bundle_has_no_diffusers_files_and_the_default_scheduler_when_the_model_has_none()
    {
        using var temp = Fixtures.Temp();
        string bundle = temp.File("dit");
        var result = ModelExporter.Export(new ExportRequest { ModelPath = DiTFixture, OutputPath = bundle, Formats = [ExportFormat.Onnx] });
        Assert.False(File.Exists(Path.Combine(bundle, "config.json")));
        Assert.False(File.Exists(Path.Combine(bundle, "diffusion_pytorch_model.safetensors")));
        var written = DiffusionPrune.Schedulers.SchedulerConfig.Parse(File.ReadAllText(Path.Combine(bundle, "scheduler_config.json")));
        var defaults = DiffusionPrune.Schedulers.SchedulerConfig.Parse(DiffusionPrune.Formats.ModelFolder.DefaultSchedule);
        Assert.False(written.ClipSample, "a class-conditional model's default config must not clip x0");
        Assert.Equal((defaults.NumTrainTimesteps, defaults.BetaStart, defaults.BetaEnd, defaults.BetaSchedule), (written.NumTrainTimesteps, written.BetaStart, written.BetaEnd, written.BetaSchedule));
        Assert.Contains("default", result.SchedulerSource);

        var meta = JsonNode.Parse(File.ReadAllText(Path.Combine(bundle, "onnx_model.json")))!.AsObject();
        Assert.Equal(new[] { "sample", "timestep", "class_labels" }, meta["inputs"]!.AsArray().Select(i => i!["name"]!.GetValue<string>()));
        Assert.True(meta["learned_sigma"]!.GetValue<bool>());
        Assert.Equal(10, meta["num_classes"]!.GetValue<int>());
        Assert.Equal(10, meta["null_class"]!.GetValue<int>());
        Assert.Equal(8, meta["out_channels"]!.GetValue<int>());
        string card = File.ReadAllText(Path.Combine(bundle, "README.md"));
        Assert.Contains("10 classes + null class 10", card);
        Assert.DoesNotContain("## Pruning", card);
    }

    [Theory]
    [InlineData("")]
    [InlineData("onnx,pickle")]
    [InlineData(" , ")]
    public void Bad_format_lists_are_argument_errors(string formats)
    {
        var e = Assert.Throws<ArgumentException>(() => ModelExporter.ParseFormats(formats));
        Assert.Contains("format", e.Message);
    }

    [Fact]
    public void Formats_are_case_insensitive_and_deduplicated()
    {
        Assert.Equal(new[] { ExportFormat.Onnx, ExportFormat.Safetensors }, ModelExporter.ParseFormats("ONNX, safetensors,onnx"));
    }

    [Fact]
    public void Exporting_onto_the_source_folder_is_refused_and_writes_nothing()
    {
        using var temp = Fixtures.Temp();
        string copy = temp.File("model");
        Directory.CreateDirectory(copy);
        foreach (var f in Directory.GetFiles(DiTFixture)) File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
        var before = Directory.GetFiles(copy).Order().ToArray();
        Assert.Throws<ArgumentException>(() => ModelExporter.Export(new ExportRequest { ModelPath = copy, OutputPath = copy + "/", Formats = [ExportFormat.Onnx] }));
        Assert.Equal(before, Directory.GetFiles(copy).Order().ToArray());
    }
}
