using System.Globalization;
using DiffusionPrune.Inference;
using DiffusionPrune.Pipeline;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Samples a seeded grid from a model through the core's <see cref="DiffusionPipeline"/> (the scheduler, steps and
/// guidance the user chose) into a PNG under <c>samples/</c>; the job's preview is the grid.
/// </summary>
public sealed class SampleJob(SampleRequest request) : StudioJob
{
    /// <summary>The request the job runs.</summary>
    public SampleRequest Request { get; } = request;

    /// <inheritdoc />
    public override string Kind => "sample";

    /// <inheritdoc />
    public override string? OutputPath => Request.OutputPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(Request);

    /// <inheritdoc />
    public override string Name => string.Create(CultureInfo.InvariantCulture,
        $"Sample {Request.Count} from {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath)))} ({Request.SchedulerName ?? "its scheduler"}, {Request.Steps} steps{(Request.GuidanceScale > 1 ? $", guidance {Request.GuidanceScale:0.##}" : "")}, seed {Request.Seed})");

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        using var pipeline = new DiffusionPipeline();
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var result = await pipeline.SampleAsync(Request, PruneJob.Forward(progress, 0, 1), cancellationToken);
        result.Final.Dispose();
        result.Trajectory?.Dispose();
        string text = string.Create(CultureInfo.InvariantCulture,
            $"Sampled {Request.Count} images in {Request.Steps} steps in {watch.Elapsed.TotalSeconds:F1} s ({watch.Elapsed.TotalMilliseconds / Request.Steps:F0} ms per step for the batch, TorchSharp on the CPU).");
        progress.Report(new JobProgress(1, text, Note: true));
        Result = text;
    }
}
