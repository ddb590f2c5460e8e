using System.Globalization;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Export;
using DiffusionPrune.Pipeline;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Evaluates a model (and, with a reference, SSIM/PSNR to it from the same noise) through the core's
/// <see cref="DiffusionPipeline"/>: FID-proxy with its interval, KID, precision/recall, class accuracy. The report is
/// written to <c>evaluations/NAME.json</c> under the Studio's output, never into the model's own folder. By default the
/// networks run in ONNX Runtime, from bundles exported on first use and cached by the model's hash
/// (<see cref="OnnxBundleCache"/>); <paramref name="onnxCache"/> null runs them in TorchSharp. The result names the
/// runtime and provider that ran and the time per sampling step.
/// </summary>
public sealed class EvaluateJob(EvalRequest request, string reportPath, string? onnxCache = null) : StudioJob
{
    /// <summary>Where ONNX bundles are cached; null runs TorchSharp.</summary>
    public string? OnnxCache { get; } = onnxCache;

    /// <summary>The request the job runs.</summary>
    public EvalRequest Request { get; } = request;

    /// <summary>Where the report is written.</summary>
    public string ReportPath { get; } = reportPath;

    /// <inheritdoc />
    public override string Kind => "evaluate";

    /// <inheritdoc />
    public override string? OutputPath => ReportPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(new StoredEvaluate(Request, ReportPath, OnnxCache));

    /// <summary>What an evaluation stores to be run again: a model's <paramref name="Request"/>, or a pipeline's (<see cref="PipelineEvaluateJob"/>) in <paramref name="Pipeline"/>.</summary>
    internal sealed record StoredEvaluate(EvalRequest? Request, string ReportPath, string? OnnxCache = null, PipelineEvaluateJob.Stored? Pipeline = null);

    /// <inheritdoc />
    public override string Name
    {
        get
        {
            string against = Request.ReferenceModelPath is { } r ? $", against {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(r)))}" : "";
            return string.Create(CultureInfo.InvariantCulture,
                $"Evaluate {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath)))} ({Request.Samples} images, {Request.Steps} steps{against}, {(OnnxCache is null ? "TorchSharp" : "ONNX Runtime")})");
        }
    }

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        var request = Request;
        if (OnnxCache is { } cache)
            request = await OnnxBundleCache.ForOnnxAsync(Request, cache,
                line => progress.Report(new JobProgress(0, line, Note: true, Stage: "export")), cancellationToken);
        using var pipeline = new DiffusionPipeline();
        var report = await pipeline.EvaluateAsync(request, PruneJob.Forward(progress, 0, 1), cancellationToken);
        Directory.CreateDirectory(Path.GetDirectoryName(ReportPath)!);
        report.Save(ReportPath);
        string text = string.Create(CultureInfo.InvariantCulture,
            $"FID-proxy {report.Fid.Value:F2} [{report.Fid.Lower:F2}, {report.Fid.Upper:F2}], KID {report.Kid.Mean:G4} ± {report.Kid.Std:G4}, precision {report.PrecisionRecall.Precision:F3}, recall {report.PrecisionRecall.Recall:F3}") +
            (report.ClassAccuracy is double acc ? string.Create(CultureInfo.InvariantCulture, $", class accuracy {acc:P1}") : "") +
            (report.Ssim is double ssim ? string.Create(CultureInfo.InvariantCulture, $", SSIM to the reference {ssim:F3}") : "") +
            string.Create(CultureInfo.InvariantCulture,
                $" ({report.Samples} images, {report.Steps} steps, on {report.Runtime}: {report.SamplerMillisecondsPerStep:F1} ms per step at batch {Math.Min(request.BatchSize, report.Samples)}).");
        progress.Report(new JobProgress(1, text, Note: true));
        Result = text;
    }
}
