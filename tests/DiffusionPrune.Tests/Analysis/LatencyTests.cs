using DiffusionPrune.Analysis;
using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Models;

namespace DiffusionPrune.Tests.Analysis;

/// <summary>ONNX Runtime and TorchSharp latency of the same model on the same inputs.</summary>
public class LatencyTests
{
    [Fact]
    public void Percentiles_interpolate_between_neighbours_like_numpy()
    {
        var result = LatencyResult.FromTimings("x", 4, 0, [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
        Assert.Equal(5.5, result.MedianMs, 12);
        Assert.Equal(1.9, result.P10Ms, 12);
        Assert.Equal(9.1, result.P90Ms, 12);
        Assert.Equal(5.5 / 4, result.MedianMsPerImage, 12);
        Assert.Equal(10, result.TimedRuns);
        Assert.Equal(result, LatencyResult.FromJson(result.ToJson()));
    }

    [Fact]
    public void Inputs_are_seeded_standard_normal_and_the_same_for_the_same_seed()
    {
        var a = LatencyInputs.Create(16, 1, 32, 32, ClassInputKind.Labels, 0, seed: 3);
        var b = LatencyInputs.Create(16, 1, 32, 32, ClassInputKind.Labels, 0, seed: 3);
        Assert.Equal(a.Sample, b.Sample);
        Assert.NotEqual(a.Sample, LatencyInputs.Create(16, 1, 32, 32, ClassInputKind.Labels, 0, seed: 4).Sample);
        double mean = a.Sample.Average(v => (double)v), variance = a.Sample.Average(v => (v - mean) * (v - mean));
        Assert.InRange(mean, -0.1, 0.1);
        Assert.InRange(variance, 0.9, 1.1);
        Assert.Equal(new long[] { 16 }, a.ClassShape);
        Assert.Equal(new long[] { 2, 128 }, LatencyInputs.Create(2, 1, 8, 8, ClassInputKind.Embedding, 128, 0).ClassShape);
    }

    [Theory]
    [InlineData("unet2d-small")]
    [InlineData("dit-small")] // class_labels input
    public void Both_backends_report_median_and_percentiles_per_batch(string fixture)
    {
        using var temp = Fixtures.Temp();
        using var model = ModelFamilies.Load(Fixtures.Diffusers(fixture, "model"));
        string onnx = temp.File(OnnxContract.FileName);
        OnnxExporter.Write(model, onnx);
        var options = new LatencyOptions { WarmupRuns = 1, TimedRuns = 3, IntraOpThreads = 1 };
        var lines = new List<string>();

        var ort = OnnxLatency.Measure(onnx, [1, 2], options, lines.Add);
        var torch = TorchLatency.Measure(model, [1, 2], options);
        foreach (var (results, backend) in new[] { (ort, LatencyResult.OnnxRuntimeCpu), (torch, LatencyResult.TorchSharp) })
        {
            Assert.Equal(new[] { 1, 2 }, results.Select(r => r.Batch));
            foreach (var r in results)
            {
                Assert.Equal(backend, r.Backend);
                Assert.Equal(3, r.TimedRuns);
                Assert.True(r.P10Ms > 0 && r.P10Ms <= r.MedianMs && r.MedianMs <= r.P90Ms, r.ToString());
            }
        }
        Assert.Equal(2, lines.Count);
        Assert.Contains("onnxruntime-cpu batch 2: median", lines[1]);
    }

    [Fact]
    public void A_missing_model_or_bad_settings_are_clear_errors()
    {
        var e = Assert.Throws<FileNotFoundException>(() => OnnxLatency.Measure("/no/such/model.onnx", [1]));
        Assert.Contains("dprune export", e.Message);
        Assert.Throws<ArgumentException>(() => OnnxLatency.Measure("/no/such/model.onnx", [0]));
        Assert.Throws<ArgumentException>(() => OnnxLatency.Measure("/no/such/model.onnx", [1], new LatencyOptions { TimedRuns = 0 }));
    }
}
