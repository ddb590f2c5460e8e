using System.Globalization;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Pipeline;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Evaluates a model (and, with a reference, SSIM/PSNR to it from the same noise) through the core's
/// <see cref="DiffusionPipeline"/>: FID-proxy with its interval, KID, precision/recall, class accuracy. The report is
/// written to <c>evaluations/NAME.json</c> under the Studio's output, never into the model's own folder.
/// </summary>
public sealed class EvaluateJob(EvalRequest request, string reportPath) : StudioJob
{
    /// <summary>The request the job runs.</summary>
    public EvalRequest Request { get; } = request;

    /// <summary>Where the report is written.</summary>
    public string ReportPath { get; } = reportPath;

    /// <inheritdoc />
    public override string Kind => "evaluate";

    /// <inheritdoc />
    public override string? OutputPath => ReportPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(new StoredEvaluate(Request, ReportPath));

    /// <summary>What an evaluation stores to be run again.</summary>
    internal sealed record StoredEvaluate(EvalRequest Request, string ReportPath);

    /// <inheritdoc />
    public override string Name
    {
        get
        {
            string against = Request.ReferenceModelPath is { } r ? $", against {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(r)))}" : "";
            return string.Create(CultureInfo.InvariantCulture,
                $"Evaluate {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath)))} ({Request.Samples} images, {Request.Steps} steps{against})");
        }
    }

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        using var pipeline = new DiffusionPipeline();
        var report = await pipeline.EvaluateAsync(Request, PruneJob.Forward(progress, 0, 1), cancellationToken);
        Directory.CreateDirectory(Path.GetDirectoryName(ReportPath)!);
        report.Save(ReportPath);
        string text = string.Create(CultureInfo.InvariantCulture,
            $"FID-proxy {report.Fid.Value:F2} [{report.Fid.Lower:F2}, {report.Fid.Upper:F2}], KID {report.Kid.Mean:G4} ± {report.Kid.Std:G4}, precision {report.PrecisionRecall.Precision:F3}, recall {report.PrecisionRecall.Recall:F3}") +
            (report.ClassAccuracy is double acc ? string.Create(CultureInfo.InvariantCulture, $", class accuracy {acc:P1}") : "") +
            (report.Ssim is double ssim ? string.Create(CultureInfo.InvariantCulture, $", SSIM to the reference {ssim:F3}") : "") +
            string.Create(CultureInfo.InvariantCulture, $" ({report.Samples} images, {report.Steps} steps, {report.SamplerMillisecondsPerImage:F1} ms per image).");
        progress.Report(new JobProgress(1, text, Note: true));
        Result = text;
    }
}
