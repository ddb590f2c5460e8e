using System.Globalization;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Training;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Distils a pruned model from its teacher through the core's <see cref="DiffusionPipeline"/> (normalized, plain or no
/// KD), then, optionally, takes a quick look at the distilled model against the teacher from the same noise. A pruned
/// Stable Diffusion pipeline distils from its teacher pipeline without a dataset, on the teacher's samples from the
/// request's prompts, and its quick look compares a fixed prompt's images with the teacher's (SSIM, PSNR; see
/// <see cref="QuickEvaluation.RunPipelineAsync"/>). The page sees every step's losses, images per second and ETA.
/// Cancelling stops after the step being run.
/// </summary>
public sealed class DistillJob(DistillRequest request, QuickEvaluation? evaluation = null) : StudioJob
{
    /// <summary>The request the job runs.</summary>
    public DistillRequest Request { get; } = request;

    /// <summary>The evaluation after distilling; null skips it.</summary>
    public QuickEvaluation? Evaluation { get; } = evaluation;

    /// <inheritdoc />
    public override string Kind => "distill";

    /// <inheritdoc />
    public override string? OutputPath => Request.OutputPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(new StoredDistill(Request, Evaluation is not null, Evaluation?.OnnxCache));

    /// <summary>What a distillation job stores to be run again.</summary>
    internal sealed record StoredDistill(DistillRequest Request, bool Evaluate, string? OnnxCache = null);

    /// <inheritdoc />
    public override string Name => string.Create(CultureInfo.InvariantCulture,
        $"Distil {Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.StudentPath))} from {Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.TeacherPath))} " +
        $"({Request.Kd.ToString().ToLowerInvariant()} KD, {Request.Steps} steps)");

    private double DistillShare => Evaluation is null ? 1.0 : 0.85;

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        using var pipeline = new DiffusionPipeline();
        var trained = await pipeline.DistillAsync(Request, PruneJob.Forward(progress, 0, DistillShare), cancellationToken);
        bool sd = StableDiffusionPipeline.IsStableDiffusionFolder(Request.StudentPath);
        if (sd) QuickEvaluation.DropInheritedQuickLook(Request.OutputPath);
        string result = string.Create(CultureInfo.InvariantCulture,
            $"distilled {trained.Steps} steps of {Request.BatchSize} {(sd ? "latents" : "images")} ({(long)trained.Steps * Request.BatchSize:N0} {(sd ? "latents" : "images")}, " +
            $"{Request.Kd.ToString().ToLowerInvariant()} KD), final loss {trained.FinalLoss:F4}, in {trained.WallTime.TotalSeconds:F1} s; saved to {Request.OutputPath}");
        if (Evaluation is { } quick)
        {
            var quickProgress = PruneJob.Forward(progress, DistillShare, 1 - DistillShare);
            result += ". " + (sd
                ? await quick.RunPipelineAsync(pipeline, Request.OutputPath, Request.TeacherPath, "the teacher", Request.Seed, quickProgress, cancellationToken)
                : await quick.RunAsync(pipeline, Request.OutputPath, Request.TeacherPath, "the teacher", Request.Seed, quickProgress, cancellationToken));
        }
        progress.Report(new JobProgress(1, result, Note: true));
        Result = result;
    }
}
