using System.Diagnostics;
using System.Globalization;
using DiffusionPrune.Export;
using DiffusionPrune.Inference;
using DiffusionPrune.Pipeline;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Samples a seeded grid from a model through the core's <see cref="DiffusionPipeline"/> (the scheduler, steps and
/// guidance the user chose) into a PNG under <c>samples/</c>; the job's preview is the grid. By default the network runs
/// in ONNX Runtime, from a bundle exported on first use and cached by the model's hash (<see cref="OnnxBundleCache"/>);
/// <paramref name="onnxCache"/> null runs it in TorchSharp. The result names the runtime and provider that ran and the
/// time per step.
/// </summary>
public sealed class SampleJob(SampleRequest request, string? onnxCache = null) : StudioJob
{
    /// <summary>The request the job runs (its model is the diffusers folder, whichever runtime runs it).</summary>
    public SampleRequest Request { get; } = request;

    /// <summary>Where ONNX bundles are cached; null runs TorchSharp.</summary>
    public string? OnnxCache { get; } = onnxCache;

    /// <inheritdoc />
    public override string Kind => "sample";

    /// <inheritdoc />
    public override string? OutputPath => Request.OutputPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(new StoredSample(Request, OnnxCache));

    /// <summary>What a sample job stores to be run again.</summary>
    internal sealed record StoredSample(SampleRequest Request, string? OnnxCache);

    /// <inheritdoc />
    public override string Name => Request.Prompt is { } prompt
        ? string.Create(CultureInfo.InvariantCulture,
            $"Sample {Request.Count} of \"{(prompt.Length > 60 ? prompt[..57] + "..." : prompt)}\" from {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath)))} ({Request.SchedulerName ?? "its scheduler"}, {Request.Steps} steps, guidance {Request.GuidanceScale:0.##}, seed {Request.Seed}, TorchSharp)")
        : string.Create(CultureInfo.InvariantCulture,
        $"Sample {Request.Count} from {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath)))} ({Request.SchedulerName ?? "its scheduler"}, {Request.Steps} steps{(Request.GuidanceScale > 1 ? $", guidance {Request.GuidanceScale:0.##}" : "")}, seed {Request.Seed}, {(OnnxCache is null ? "TorchSharp" : "ONNX Runtime")})");

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        var request = Request;
        if (OnnxCache is { } cache)
        {
            string bundle = await Task.Run(() => OnnxBundleCache.Ensure(Request.ModelPath, cache,
                line => progress.Report(new JobProgress(0, line, Note: true, Stage: "export")), cancellationToken), cancellationToken);
            request = Request with { ModelPath = bundle, Backend = "onnx", Provider = "auto" };
        }
        using var pipeline = new DiffusionPipeline();
        // the time per step from the sampler's own step reports: from the first step's end to the last's
        var clock = Stopwatch.StartNew();
        double? firstStep = null, lastStep = null;
        var forward = PruneJob.Forward(progress, 0, 1);
        var timed = new SynchronousProgress<StageProgress>(p =>
        {
            if (p.Stage == PipelineStage.Sample && p.Done is long done)
            {
                if (done == 1) firstStep = clock.Elapsed.TotalMilliseconds;
                if (done == p.Total) lastStep = clock.Elapsed.TotalMilliseconds;
            }
            forward.Report(p);
        });
        var result = await pipeline.SampleAsync(request, timed, cancellationToken);
        result.Final.Dispose();
        result.Trajectory?.Dispose();
        string runtime = pipeline.Models.FirstOrDefault()?.Inference.Runtime ?? request.Backend;
        double perStep = request.Steps > 1 && firstStep is double a && lastStep is double b ? (b - a) / (request.Steps - 1) : clock.Elapsed.TotalMilliseconds / request.Steps;
        string text = string.Create(CultureInfo.InvariantCulture,
            $"Sampled {request.Count} images in {request.Steps} steps on {runtime}: {perStep:F1} ms per step for the batch of {request.Count}.");
        progress.Report(new JobProgress(1, text, Note: true));
        Result = text;
    }
}
