using System.Globalization;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pipeline.StableDiffusion;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Evaluates a Stable Diffusion pipeline (pruned, distilled) against a reference pipeline, usually its original, through
/// the core's <see cref="DiffusionPipeline.EvaluateStableDiffusionAsync"/>: each prompt's images from both from the same
/// noise, paired SSIM, PSNR and latent MSE, LD-Pruner's latent statistic, U-Net parameters and MACs, and the time per
/// step of each, in TorchSharp. No FID-proxy: it measures against MNIST, and no real images ship for prompts. The report
/// is written to <c>evaluations/NAME/eval-*.json</c> under the Studio's output (the two pipelines named as the catalog
/// lists them, never by path) with the same-seed grid beside it as a PNG of the same name; the grid is the job's preview.
/// Its kind is <c>evaluate</c>, as a model's evaluation.
/// </summary>
public sealed class PipelineEvaluateJob(StableDiffusionEvalRequest request, string reportPath, string modelName, string referenceName) : StudioJob
{
    /// <summary>The request the job runs (its grid goes beside <see cref="ReportPath"/>, whatever the request says).</summary>
    public StableDiffusionEvalRequest Request { get; } = request;

    /// <summary>Where the report is written.</summary>
    public string ReportPath { get; } = reportPath;

    /// <summary>The evaluated pipeline as the catalog lists it.</summary>
    public string ModelName { get; } = modelName;

    /// <summary>The reference pipeline as the catalog lists it.</summary>
    public string ReferenceName { get; } = referenceName;

    /// <summary>The same-seed grid: the report's path with .png.</summary>
    public string GridPath => Path.ChangeExtension(ReportPath, ".png");

    /// <inheritdoc />
    public override string Kind => "evaluate";

    /// <inheritdoc />
    public override string? OutputPath => ReportPath;

    /// <inheritdoc />
    public override string? RequestJson =>
        System.Text.Json.JsonSerializer.Serialize(new EvaluateJob.StoredEvaluate(null, ReportPath, Pipeline: new Stored(Request, ModelName, ReferenceName)));

    /// <summary>What a pipeline's evaluation stores to be run again (inside <see cref="EvaluateJob.StoredEvaluate"/>).</summary>
    internal sealed record Stored(StableDiffusionEvalRequest Request, string ModelName, string ReferenceName);

    /// <inheritdoc />
    public override string Name => string.Create(CultureInfo.InvariantCulture,
        $"Evaluate {OutputNames.Shown(ModelName)} against {OutputNames.Shown(ReferenceName)} ({(Request.Prompts ?? StableDiffusionEvaluator.DefaultPrompts).Count} prompts x {Request.ImagesPerPrompt} images, " +
        $"{Request.Steps} steps, guidance {Request.GuidanceScale:0.##}, seed {Request.Seed}, TorchSharp)");

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(ReportPath))!);
        using var pipeline = new DiffusionPipeline();
        var report = await pipeline.EvaluateStableDiffusionAsync(Request with { GridPath = GridPath }, PruneJob.Forward(progress, 0, 1), cancellationToken);
        (report with { Model = ModelName, Reference = ReferenceName, Grid = Path.GetFileName(GridPath) }).Save(ReportPath);
        var inv = CultureInfo.InvariantCulture;
        string text = string.Create(inv,
            $"SSIM to {ReferenceName} {report.Ssim.Mean:F3} ± {report.Ssim.Std:F3} (worst {report.Ssim.Worst:F3}), PSNR {report.Psnr.Mean:F2} dB (worst {report.Psnr.Worst:F2}), " +
            $"latent MSE / variance {report.LatentRelativeMse.Mean:F4}, latent statistic shift {report.LatentStatisticShift:F4}; ") +
            string.Create(inv,
            $"U-Net {report.ModelCost.UnetParameters:N0} of {report.ReferenceCost.UnetParameters:N0} parameters ({1 - (double)report.ModelCost.UnetParameters / report.ReferenceCost.UnetParameters:P1} removed), " +
            $"{report.ModelCost.MillisecondsPerStep:F1} ms per step against {report.ReferenceCost.MillisecondsPerStep:F1} ({report.Images} images, {report.Steps} steps, TorchSharp).");
        progress.Report(new JobProgress(1, text, Note: true));
        Result = text;
    }
}
