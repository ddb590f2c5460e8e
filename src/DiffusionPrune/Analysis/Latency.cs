// TorchSharp-free: the measurement records and the inputs both backends share. Use only the BCL here.
using System.Globalization;
using System.Text.Json.Nodes;
using DiffusionPrune.Data;

namespace DiffusionPrune.Analysis;

/// <summary>How a latency measurement runs: untimed warm-up runs, then timed runs, at each batch size.</summary>
public sealed record LatencyOptions
{
    /// <summary>Runs before timing starts (lazy allocation, kernel selection, caches); default 3.</summary>
    public int WarmupRuns { get; init; } = 3;

    /// <summary>Timed runs whose median and 10th/90th percentiles are reported; default 20.</summary>
    public int TimedRuns { get; init; } = 20;

    /// <summary>ONNX Runtime intra-op threads; 0 (default) lets ONNX Runtime choose, one per physical core.</summary>
    public int IntraOpThreads { get; init; }

    /// <summary>Seed of the random sample values (the same for both backends).</summary>
    public ulong Seed { get; init; }

    public void Validate()
    {
        if (WarmupRuns < 0) throw new ArgumentException($"Latency warm-up runs must be 0 or more (got {WarmupRuns}).");
        if (TimedRuns < 1) throw new ArgumentException($"Latency needs at least 1 timed run (got {TimedRuns}).");
        if (IntraOpThreads < 0) throw new ArgumentException($"Intra-op threads must be 0 (ONNX Runtime's choice) or more (got {IntraOpThreads}).");
    }

    internal static void ValidateBatches(IReadOnlyList<int> batches)
    {
        if (batches.Count == 0) throw new ArgumentException("Give at least one batch size to time.");
        foreach (int b in batches)
            if (b < 1) throw new ArgumentException($"Batch sizes must be 1 or more (got {b}).");
    }
}

/// <summary>Timed forward passes of one backend at one batch size; milliseconds per call (the whole batch).</summary>
public sealed record LatencyResult(string Backend, int Batch, int WarmupRuns, int TimedRuns, double MedianMs, double P10Ms, double P90Ms)
{
    public const string OnnxRuntimeCpu = "onnxruntime-cpu";
    public const string TorchSharp = "torchsharp";

    public double MedianMsPerImage => MedianMs / Batch;

    /// <summary>Summarises raw timings: median, 10th and 90th percentile (linear interpolation, as numpy's default).</summary>
    public static LatencyResult FromTimings(string backend, int batch, int warmupRuns, IReadOnlyList<double> milliseconds)
    {
        if (milliseconds.Count == 0) throw new ArgumentException("No timings to summarise.");
        var sorted = milliseconds.Order().ToArray();
        return new LatencyResult(backend, batch, warmupRuns, sorted.Length, Percentile(sorted, 0.5), Percentile(sorted, 0.1), Percentile(sorted, 0.9));
    }

    /// <summary>The <paramref name="q"/> quantile of sorted values, interpolating between neighbours.</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double q)
    {
        double position = q * (sorted.Count - 1);
        int low = (int)Math.Floor(position), high = (int)Math.Ceiling(position);
        return sorted[low] + (sorted[high] - sorted[low]) * (position - low);
    }

    public JsonObject ToJson() => new()
    {
        ["backend"] = Backend,
        ["batch"] = Batch,
        ["warmup_runs"] = WarmupRuns,
        ["timed_runs"] = TimedRuns,
        ["median_ms"] = Round(MedianMs),
        ["p10_ms"] = Round(P10Ms),
        ["p90_ms"] = Round(P90Ms),
        ["median_ms_per_image"] = Round(MedianMsPerImage),
    };

    /// <exception cref="InvalidDataException">A key is missing.</exception>
    public static LatencyResult FromJson(JsonNode json)
    {
        JsonNode Need(string key) => json[key] ?? throw new InvalidDataException($"A latency result has no \"{key}\".");
        return new LatencyResult(Need("backend").GetValue<string>(), Need("batch").GetValue<int>(), Need("warmup_runs").GetValue<int>(),
            Need("timed_runs").GetValue<int>(), Need("median_ms").GetValue<double>(), Need("p10_ms").GetValue<double>(), Need("p90_ms").GetValue<double>());
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Backend} batch {Batch}: median {MedianMs:F2} ms [p10 {P10Ms:F2}, p90 {P90Ms:F2}] = {MedianMsPerImage:F2} ms/image ({TimedRuns} runs after {WarmupRuns} warm-up)");

    private static double Round(double ms) => Math.Round(ms, 4);
}

/// <summary>What a graph's optional conditioning input takes (see Export/OnnxExporter.cs, OnnxContract).</summary>
public enum ClassInputKind
{
    /// <summary>Unconditional: no class_labels input.</summary>
    None,

    /// <summary>int64 [batch] class labels.</summary>
    Labels,

    /// <summary>float32 [batch, dim]: a UNet2DModel with class_embed_type "identity" takes a ready-made embedding.</summary>
    Embedding,
}

/// <summary>
/// One batch of denoiser inputs as plain arrays, so ONNX Runtime and TorchSharp time exactly the same values:
/// a seeded standard-normal <c>sample</c>, <c>timestep</c> 0 for every row (every timestep embedding accepts it;
/// the value does not change the work) and, for conditional models, label 0 or a zero embedding.
/// </summary>
public sealed class LatencyInputs
{
    public required int Batch { get; init; }
    public required float[] Sample { get; init; }
    public required long[] SampleShape { get; init; }
    public required long[] Timesteps { get; init; }
    public ClassInputKind ClassInput { get; init; }
    public long[]? ClassLabels { get; init; }
    public float[]? ClassEmbeddings { get; init; }
    public long[]? ClassShape { get; init; }

    public static LatencyInputs Create(int batch, int channels, int height, int width, ClassInputKind classInput, int embeddingDim, ulong seed)
    {
        if (batch < 1) throw new ArgumentException($"Batch sizes must be 1 or more (got {batch}).");
        var sample = new float[(long)batch * channels * height * width];
        var random = new SplitMix64(seed * 0x9E3779B97F4A7C15UL + (ulong)batch);
        for (int i = 0; i < sample.Length; i += 2)
        {
            // Box–Muller: two uniform (0, 1] draws make two independent normals.
            double u1 = (random.Next() >> 11) * (1.0 / (1UL << 53)) + 1.0 / (1UL << 54);
            double u2 = (random.Next() >> 11) * (1.0 / (1UL << 53));
            double radius = Math.Sqrt(-2 * Math.Log(u1));
            sample[i] = (float)(radius * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < sample.Length) sample[i + 1] = (float)(radius * Math.Sin(2 * Math.PI * u2));
        }
        return new LatencyInputs
        {
            Batch = batch,
            Sample = sample,
            SampleShape = [batch, channels, height, width],
            Timesteps = new long[batch],
            ClassInput = classInput,
            ClassLabels = classInput == ClassInputKind.Labels ? new long[batch] : null,
            ClassEmbeddings = classInput == ClassInputKind.Embedding ? new float[(long)batch * embeddingDim] : null,
            ClassShape = classInput switch
            {
                ClassInputKind.Labels => [batch],
                ClassInputKind.Embedding => [batch, embeddingDim],
                _ => null,
            },
        };
    }
}
