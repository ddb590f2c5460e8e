using System.Security.Cryptography;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Layers;
using DiffusionPrune.Tests.Pipeline;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>
/// Width pruning of a Stable Diffusion pipeline's U-Net (a copy of sd-pipeline-small): the output is a whole pipeline that
/// loads and samples, with a smaller unet/ and the other components shared with the source, which stays as it was.
/// </summary>
public class PipelinePruningTests(ITestOutputHelper output)
{
    /// <summary>Every file under a folder with a hash of its bytes, to prove a source folder unchanged.</summary>
    private static SortedDictionary<string, string> Snapshot(string folder)
    {
        var files = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var file in Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories))
            files[Path.GetRelativePath(folder, file)] = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file)));
        return files;
    }

    private static PruneRequest Request(string pipeline, string method, string outputPath) => new()
    {
        ModelPath = pipeline,
        Method = method,
        TargetParams = 0.2,
        OutputPath = outputPath,
        Iterations = 2,
        Steps = 2,
        Calibration = 2,
        Seed = 1,
        EcoDiff = new EcoDiffOptions { BatchSize = 2, GuidanceScale = 7.5 },
    };

    [Theory]
    [InlineData("magnitude")]
    [InlineData("random")]
    [InlineData("ecodiff")]
    public void Pruning_a_pipeline_writes_a_pipeline_copy_with_a_smaller_unet_that_loads_and_generates(string method)
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        var before = Snapshot(pipeline);
        string pruned = temp.File("pruned");
        var request = Request(pipeline, method, pruned) with { Prompts = method == "ecodiff" ? ["a red cube on a table", "a blue sky"] : null };

        var report = PruneRunner.Run(request, CPU, output.WriteLine);

        Assert.Equal(before, Snapshot(pipeline));
        Assert.InRange(report.AchievedParams, 0.15, 0.25);
        Assert.True(File.Exists(Path.Combine(pruned, ModelFolder.PruneReport)));
        Assert.True(File.Exists(Path.Combine(pruned, ModelFolder.PrunePlan)));
        Assert.False(File.Exists(Path.Combine(pruned, "unet", ModelFolder.PruneReport)));
        var unetConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(pruned, "unet", ModelFolder.Config)))!.AsObject();
        Assert.NotNull(unetConfig[ModelStructure.JsonKey]);
        // Every other component is the source's, byte for byte.
        foreach (var (file, hash) in before.Where(f => !f.Key.StartsWith("unet", StringComparison.Ordinal)))
            Assert.Equal(hash, Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(Path.Combine(pruned, file)))));
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(pruned, ModelFolder.PruneReport)))!;
        if (method == "ecodiff")
        {
            Assert.Equal(2, json["settings"]!["prompts"]!.AsArray().Count);
            Assert.Equal("request", (string?)json["settings"]!["prompt_source"]);
            Assert.Equal(7.5, (double)json["settings"]!["guidance_scale"]!);
        }

        using var source = StableDiffusionPipeline.Load(pipeline);
        using var smaller = StableDiffusionPipeline.Load(pruned);
        output.WriteLine($"{method}: U-Net {source.Unet.ParameterCount():N0} -> {smaller.Unet.ParameterCount():N0}");
        Assert.Equal(report.ParametersAfter, smaller.Unet.ParameterCount());
        Assert.True(smaller.Unet.ParameterCount() < source.Unet.ParameterCount());
        using var image = smaller.Generate("a photograph of an astronaut riding a horse", null, 1, seed: 5, new SampleOptions(2, 7.5));
        Assert.Equal(new long[] { 1, 3, 32, 32 }, image.Image01.shape);
        Assert.True(isfinite(image.Image).all().item<bool>());
    }

    [Fact]
    public void EcoDiff_on_a_pipeline_without_prompts_calibrates_on_the_built_in_ones()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        using var model = DiffusionPrune.Families.ModelFamilies.Load(pipeline);
        var request = Request(pipeline, "ecodiff", temp.File("out")) with { EcoDiff = new EcoDiffOptions { BatchSize = 2 } };

        using var pruned = PruneRunner.Prune(model, request, PruneRunner.SchedulerConfigOf(request), CPU);

        var prompts = pruned.Report.Settings["prompts"]!.AsArray().Select(p => (string)p!).ToArray();
        Assert.Equal(PruneRunner.DefaultCalibrationPrompts, prompts);
        Assert.Equal("built-in", (string?)pruned.Report.Settings["prompt_source"]);
        Assert.True(pruned.Model.ParameterCount() < model.ParameterCount());
    }

    [Theory]
    [InlineData("laptop")]
    [InlineData("ldpruner")]
    [InlineData("random-layer")]
    public void Layer_methods_remove_whole_transformers_or_resnets_of_a_pipelines_unet_and_the_copy_generates(string method)
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        var before = Snapshot(pipeline);
        string pruned = temp.File("pruned");
        var request = Request(pipeline, method, pruned) with { AdditivitySubsets = 2, Prompts = method == "random-layer" ? null : ["a red cube", "a dog"] };

        var report = PruneRunner.Run(request, CPU, output.WriteLine);

        Assert.Equal(before, Snapshot(pipeline));
        Assert.NotNull(report.Layers);
        Assert.NotEmpty(report.Layers!.Removed);
        Assert.True(report.AchievedParams >= 0.2, $"removed {report.AchievedParams:P1}");
        output.WriteLine($"{method}: removed {string.Join(", ", report.Layers.Removed)}");
        using var smaller = StableDiffusionPipeline.Load(pruned);
        Assert.Equal(report.ParametersAfter, smaller.Unet.ParameterCount());
        Assert.Equal(report.Layers.Removed.Order(StringComparer.Ordinal), smaller.Unet.Structure.RemovedLayers);
        using var image = smaller.Generate("a photograph of an astronaut riding a horse", null, 1, seed: 5, new SampleOptions(2, 7.5));
        Assert.True(isfinite(image.Image).all().item<bool>());
    }

    [Fact]
    public void A_latency_budget_on_a_pipeline_times_its_unet_on_text_states_and_reads_the_table_from_unet()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string table = Path.Combine(pipeline, "unet", LayerCosts.LatencyFile);
        using (var unet = ModelFamilies.Load(pipeline))
        {
            var timings = TorchLatency.Measure(unet, [1, 2], new LatencyOptions { WarmupRuns = 1, TimedRuns = 2 });
            Assert.All(timings, t => Assert.True(double.IsFinite(t.MedianMs) && t.MedianMs > 0, t.ToString()));
            // The runner's table (its default runs), measured on text states and cached beside the U-Net it times.
            var measured = LayerCosts.Latency(PrunableGroups.Of(unet), Path.Combine(pipeline, "unet"), batch: 1, new LatencyOptions { WarmupRuns = 3, TimedRuns = 20 });
            Assert.Equal("measured", measured.Source);
            Assert.True(double.IsFinite(measured.Total) && measured.Total > 0);
            Assert.All(measured.Saving.Values, v => Assert.True(double.IsFinite(v) && v >= 0));
        }
        Assert.True(File.Exists(table));
        // How much each layer saves is timing, which load on the machine blurs; the selection below must not be. So the
        // cached table is set to every layer saving a tenth of the time: the runner must read it and remove one layer.
        var root = JsonNode.Parse(File.ReadAllText(table))!;
        var entry = root["tables"]!.AsObject().Single().Value!;
        double full = (double)entry["full_ms"]!;
        foreach (var path in entry["without_ms"]!.AsObject().Select(kv => kv.Key).ToList()) entry["without_ms"]![path] = full * 0.9;
        File.WriteAllText(table, root.ToJsonString());
        string pruned = temp.File("pruned");
        var request = Request(pipeline, "laptop", pruned) with { Budget = LayerBudget.Latency, TargetParams = 0.08, AdditivitySubsets = 2, Prompts = ["a red cube"] };
        var lines = new List<string>();

        var report = PruneRunner.Run(request, CPU, line => { lines.Add(line); output.WriteLine(line); });

        Assert.Contains(lines, l => l.Contains("latency table: read from", StringComparison.Ordinal));
        Assert.Single(report.Layers!.Removed);
        var settings = JsonNode.Parse(File.ReadAllText(Path.Combine(pruned, ModelFolder.PruneReport)))!["settings"]!;
        Assert.Equal("latency", (string?)settings["budget"]);
        using var smaller = StableDiffusionPipeline.Load(pruned);
        Assert.Equal(report.ParametersAfter, smaller.Unet.ParameterCount());
    }

    [Fact]
    public void Prompts_are_refused_for_a_model_that_is_not_a_pipeline_and_for_methods_that_do_not_read_them()
    {
        using var temp = Fixtures.Temp();
        var onUNet = new PruneRequest
        {
            ModelPath = PruningTestSupport.UNetFixture, Method = "ecodiff", TargetParams = 0.2, OutputPath = temp.File("a"), Prompts = ["a cat"],
        };
        Assert.Contains("--prompts calibrates the U-Net of a Stable Diffusion pipeline", Assert.Throws<ArgumentException>(() => PruneRunner.Run(onUNet, CPU)).Message);

        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        var onMagnitude = Request(pipeline, "magnitude", temp.File("b")) with { Prompts = ["a cat"] };
        Assert.Contains("magnitude does not read them", Assert.Throws<ArgumentException>(() => PruneRunner.Run(onMagnitude, CPU)).Message);
    }

    [Fact]
    public void EcoDiff_on_a_text_unet_folder_without_its_pipeline_is_refused_asking_for_the_pipeline()
    {
        using var temp = Fixtures.Temp();
        var request = new PruneRequest
        {
            ModelPath = Fixtures.Diffusers("unet2d-condition-small", "model"), Method = "ecodiff", TargetParams = 0.2, OutputPath = temp.File("out"),
            SchedulerConfigPath = Path.Combine(Fixtures.Diffusers("sd-pipeline-small", "pipeline"), "scheduler", ModelFolder.SchedulerConfig),
        };
        var error = Assert.Throws<ArgumentException>(() => PruneRunner.Run(request, CPU));
        Assert.Contains("give the Stable Diffusion pipeline folder", error.Message);
    }
}
