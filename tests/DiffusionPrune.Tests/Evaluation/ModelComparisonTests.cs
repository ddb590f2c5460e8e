using DiffusionPrune.Analysis;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Formats;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pruning;
using SixLabors.ImageSharp;
using Xunit;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Evaluation;

/// <summary>A comparison of an original and its pruned variants, from the same noise, through the pipeline.</summary>
public class ModelComparisonTests
{
    private static string TinyModel(TempFolder temp) => Fixtures.TinyEvaluableUNet(temp, "original", seed: 5);

    [Fact]
    public async Task An_original_and_two_pruned_variants_are_compared_from_the_same_noise()
    {
        using var temp = Fixtures.Temp();
        string original = TinyModel(temp);
        using var pipeline = new DiffusionPipeline();
        foreach (var method in new[] { "magnitude", "random" })
            await pipeline.PruneAsync(new PruneRequest { ModelPath = original, Method = method, TargetParams = 0.25, OutputPath = temp.File(method) });

        string output = temp.File("comparison");
        var seen = new List<StageProgress>();
        var report = await pipeline.CompareAsync(new CompareRequest
        {
            ModelPaths = [original, temp.File("magnitude"), temp.File("random")], Names = ["original", "magnitude 25%"],
            OutputPath = output, Samples = 6, Steps = 2, GridImages = 4, Seed = 9,
            Latency = new LatencyOptions { WarmupRuns = 1, TimedRuns = 2 },
        }, new SynchronousProgress<StageProgress>(seen.Add));

        Assert.Equal(["original", "magnitude 25%", "random"], report.Models.Select(m => m.Name));
        var (reference, magnitude, random) = (report.Models[0], report.Models[1], report.Models[2]);
        Assert.True(reference.IsReference);
        Assert.Equal("original", reference.Method);
        Assert.Equal(0, reference.RemovedParams);
        Assert.Null(reference.Ssim); // nothing to pair with itself
        Assert.Empty(reference.KeptFractionPerLayer);
        Assert.Equal("magnitude", magnitude.Method);
        Assert.Equal(0.25, magnitude.Target);
        Assert.Equal("random", random.Method);
        foreach (var m in new[] { magnitude, random })
        {
            Assert.True(m.Parameters < reference.Parameters);
            Assert.Equal(1 - (double)m.Parameters / reference.Parameters, m.RemovedParams, 12);
            Assert.NotEmpty(m.KeptFractionPerLayer);
            Assert.Contains(m.KeptFractionPerLayer.Values, kept => kept < 1);
            Assert.InRange(m.Ssim!.Value, -1, 1);
            Assert.True(m.MeanAbsoluteDifference > 0);
            Assert.True(File.Exists(Path.Combine(output, m.Difference!)));
        }
        foreach (var m in report.Models)
        {
            Assert.True(double.IsFinite(m.Fid) && m.FidLower <= m.Fid && m.Fid <= m.FidUpper, $"{m.Name}: {m.Fid} [{m.FidLower}, {m.FidUpper}]");
            Assert.Equal(1, m.Torch!.Batch);
            Assert.Equal(LatencyResult.OnnxRuntimeCpu, m.Onnx!.Backend);
            Assert.True(m.Torch.MedianMs > 0 && m.Onnx.MedianMs > 0);
            using var grid = Image.Load(Path.Combine(output, m.Grid));
            Assert.Equal(2 * 64 + 3 * 2, grid.Width); // 2 x 2 tiles of 32 shown at twice their size, 2-pixel padding
        }
        Assert.Contains(seen, p => p.Stage == PipelineStage.Compare && p.Fraction == 1);

        // The same noise: the reference sampled again by itself makes the same grid
        var again = await pipeline.CompareAsync(new CompareRequest
        {
            ModelPaths = [original, temp.File("magnitude")], OutputPath = temp.File("again"), Samples = 6, Steps = 2, GridImages = 4, Seed = 9, LatencyBatch = null,
        });
        Assert.Equal(File.ReadAllBytes(Path.Combine(output, "grid-0.png")), File.ReadAllBytes(Path.Combine(temp.File("again"), "grid-0.png")));
        Assert.Equal(magnitude.Ssim, again.Models[1].Ssim);
        Assert.Null(again.Models[0].Torch);
        Assert.All(report.Models, m => Assert.Equal("torch (cpu)", m.SampledWith));

        // In ONNX Runtime (each model's bundle exported into the comparison): the same pictures and figures within float error
        var onnx = await pipeline.CompareAsync(new CompareRequest
        {
            ModelPaths = [original, temp.File("magnitude")], OutputPath = temp.File("onnx"), Samples = 6, Steps = 2, GridImages = 4, Seed = 9, LatencyBatch = null,
            Runtime = "onnx",
        });
        Assert.All(onnx.Models, m => Assert.Equal("onnx (CPU)", m.SampledWith));
        Assert.All(onnx.Models, m => Assert.True(m.MillisecondsPerStep > 0 && m.SampledBatch == 6 && m.SampledSteps == 2));
        Assert.True(File.Exists(Path.Combine(temp.File("onnx"), "bundles", "0-" + Path.GetFileName(original), "model.onnx")));
        Assert.Equal(magnitude.Ssim!.Value, onnx.Models[1].Ssim!.Value, 1e-4);
        Assert.InRange(Math.Abs(onnx.Models[1].Fid - magnitude.Fid) / magnitude.Fid, 0, 1e-4); // relative: an untrained model's FID-proxy is large
        using (var torchGrid = Image.Load<SixLabors.ImageSharp.PixelFormats.L8>(Path.Combine(output, "grid-1.png")))
        using (var onnxGrid = Image.Load<SixLabors.ImageSharp.PixelFormats.L8>(Path.Combine(temp.File("onnx"), "grid-1.png")))
        {
            int worst = 0;
            for (int y = 0; y < torchGrid.Height; y++)
                for (int x = 0; x < torchGrid.Width; x++)
                    worst = Math.Max(worst, Math.Abs(torchGrid[x, y].PackedValue - onnxGrid[x, y].PackedValue));
            Assert.InRange(worst, 0, 1); // one grey level: rounding of values equal to float error
        }
        Assert.Throws<ArgumentException>(new CompareRequest { ModelPaths = ["/a", "/b"], OutputPath = "/o", Runtime = "tensorrt" }.Check);

        // Written whole: the report reads back equal, the markdown names every model, the figures exist
        var loaded = ComparisonReport.Load(output);
        Assert.Equal(report.Models.Select(m => m.ToJson().ToJsonString()), loaded.Models.Select(m => m.ToJson().ToJsonString()));
        string markdown = File.ReadAllText(Path.Combine(output, ComparisonReport.MarkdownName));
        foreach (var m in report.Models) Assert.Contains($"| {m.Name} |", markdown);
        Assert.Contains("95%", markdown);
        foreach (var figure in new[] { ComparisonReport.PngName, ComparisonReport.ParetoName, ComparisonReport.HeatMapName })
            using (var image = Image.Load(Path.Combine(output, figure)))
                Assert.True(image.Width > 300 && image.Height > 200, figure);
    }

    [Fact]
    public void A_comparison_with_a_figure_that_was_not_finite_still_reads_back()
    {
        using var temp = Fixtures.Temp();
        var model = new ComparedModel("diverged", "UNet2DModel", "random", 0.5, 0.5, 10, 20, double.NaN, double.NaN, double.PositiveInfinity,
            double.NaN, double.NaN, 0, 0, null, double.NaN, double.PositiveInfinity, 1, null, null, new Dictionary<string, double>(), "grid-1.png", "difference-1.png", 3);
        var report = new ComparisonReport([model with { Name = "ref", Difference = null, Fid = 100, FidLower = 90, FidUpper = 110 }, model],
            4, 2, 0, 4, null, "MNIST test split", "feature net", "cpu", DateTimeOffset.UnixEpoch, 1);
        report.Write(temp.Path);
        var loaded = ComparisonReport.Load(temp.Path);
        Assert.True(double.IsNaN(loaded.Models[1].Fid));
        Assert.True(double.IsNaN(loaded.Models[1].FidUpper)); // infinity is written as null and reads back as NaN
        Assert.Equal(100, loaded.Models[0].Fid);
        Assert.Contains("| diverged |", loaded.Markdown());
    }

    [Fact]
    public async Task Models_of_different_shapes_are_refused_before_anything_is_sampled()
    {
        using var temp = Fixtures.Temp();
        string original = TinyModel(temp);
        string small = temp.File("small");
        manual_seed(6);
        using (var model = ModelFamilies.Create(ConfigJson.Parse(File.ReadAllText(Path.Combine(original, ModelFolder.Config)).Replace("\"sample_size\": 32", "\"sample_size\": 16"))))
            DiffusersModelLoader.Save(model, small);
        File.Copy(Path.Combine(original, ModelFolder.SchedulerConfig), Path.Combine(small, ModelFolder.SchedulerConfig));
        using var pipeline = new DiffusionPipeline();
        var refusal = await Assert.ThrowsAsync<ArgumentException>(() => pipeline.CompareAsync(new CompareRequest
        {
            ModelPaths = [original, small], OutputPath = temp.File("c"), Samples = 4, Steps = 1, GridImages = 1, LatencyBatch = null,
        }));
        Assert.Contains("compare models of one shape", refusal.Message);
        Assert.False(File.Exists(Path.Combine(temp.File("c"), "grid-0.png")));
    }

    [Theory]
    [InlineData(1, "Compare 2 to 6 models")]
    [InlineData(7, "Compare 2 to 6 models")]
    public void The_number_of_models_is_checked(int count, string expected)
    {
        var request = new CompareRequest { ModelPaths = Enumerable.Range(0, count).Select(i => $"/m{i}").ToArray(), OutputPath = "/o" };
        Assert.Contains(expected, Assert.Throws<ArgumentException>(request.Check).Message);
    }

    [Fact]
    public void A_model_listed_twice_or_settings_out_of_range_are_refused()
    {
        Assert.Contains("twice", Assert.Throws<ArgumentException>(new CompareRequest { ModelPaths = ["/m", "/m/"], OutputPath = "/o" }.Check).Message);
        Assert.Contains("Samples", Assert.Throws<ArgumentException>(new CompareRequest { ModelPaths = ["/a", "/b"], OutputPath = "/o", Samples = 1 }.Check).Message);
        Assert.Contains("Grid", Assert.Throws<ArgumentException>(new CompareRequest { ModelPaths = ["/a", "/b"], OutputPath = "/o", GridImages = 65 }.Check).Message);
    }
}
