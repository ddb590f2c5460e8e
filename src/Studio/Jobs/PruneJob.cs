using System.Globalization;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>What a prune job evaluates after pruning: a quick look, not a benchmark (the CLI's eval is for those).</summary>
/// <param name="Samples">Images sampled from the pruned model and, from the same noise, the original.</param>
/// <param name="Steps">DDIM steps per image.</param>
/// <param name="OnnxCache">
/// Where ONNX bundles are cached: both models then run in ONNX Runtime, from bundles exported on first use and cached by
/// the model's hash; null runs them in TorchSharp.
/// </param>
public sealed record QuickEvaluation(int Samples = 64, int Steps = 10, string? OnnxCache = null)
{
    /// <summary>
    /// Evaluates <paramref name="model"/> against <paramref name="reference"/> from the same noise, saves the report beside
    /// the model and returns one sentence: "Quick look (...): FID-proxy ... [...], SSIM to {referenceName} ...".
    /// </summary>
    public async Task<string> RunAsync(DiffusionPipeline pipeline, string model, string reference, string referenceName, long seed,
        IProgress<StageProgress> progress, CancellationToken cancellationToken)
    {
        var request = new EvalRequest
        {
            ModelPath = model,
            ReferenceModelPath = reference,
            Samples = Samples,
            Steps = Steps,
            BatchSize = Samples,
            Seed = seed,
            BootstrapResamples = 100,
        };
        if (OnnxCache is { } cache)
            request = await DiffusionPrune.Export.OnnxBundleCache.ForOnnxAsync(request, cache,
                line => progress.Report(StageProgress.Note(PipelineStage.Export, line)), cancellationToken);
        var eval = await pipeline.EvaluateAsync(request, progress, cancellationToken);
        eval.Save(Path.Combine(model, Formats.ModelFolder.EvalReport));
        string text = string.Create(CultureInfo.InvariantCulture,
            $"Quick look ({Samples} samples x {Steps} steps, on {eval.Runtime}: {eval.SamplerMillisecondsPerStep:F1} ms per step at batch {Samples}): FID-proxy {eval.Fid.Value:F1} [{eval.Fid.Lower:F1}, {eval.Fid.Upper:F1}]");
        if (eval.Ssim is double ssim) text += string.Create(CultureInfo.InvariantCulture, $", SSIM to {referenceName} {ssim:F3}");
        return text;
    }

    /// <summary>
    /// Removes the quick look grid a pipeline written by the core took over from its source (the core hard-links every
    /// component it does not write, and the grid pictured the source): it must neither describe the new pipeline nor be
    /// written through. Removing the link leaves the source's file as it was.
    /// </summary>
    internal static void DropInheritedQuickLook(string pipelineFolder)
    {
        string inherited = Path.Combine(pipelineFolder, PruneJob.QuickLookFile);
        if (File.Exists(inherited)) File.Delete(inherited);
    }

    /// <summary>The prompt a pruned Stable Diffusion pipeline's quick look draws (diffusers' own example prompt).</summary>
    public const string PipelinePrompt = "a photograph of an astronaut riding a horse";

    /// <summary>Images per pipeline in a pipeline's quick look: text-to-image on the CPU is slow, so two, not <see cref="Samples"/>.</summary>
    public const int PipelineImages = 2;

    /// <summary>
    /// The quick look of a pruned or distilled Stable Diffusion pipeline against <paramref name="reference"/> (its original
    /// or its teacher), through the core's evaluation of pipelines (<see cref="DiffusionPipeline.EvaluateStableDiffusionAsync"/>):
    /// <see cref="PipelineImages"/> images of <see cref="PipelinePrompt"/> from both, same seed (so the same starting noise),
    /// <see cref="Steps"/> steps, guidance 7.5, in TorchSharp, compared pair by pair (SSIM, PSNR, latent MSE). No
    /// FID-proxy: it measures against MNIST, and there are no reference images for prompts. The report is saved as
    /// <see cref="ModelFolder.EvalReport"/> and the same-seed grid (reference | model | 4 x difference, one row per image)
    /// as <see cref="PruneJob.QuickLookFile"/> in the pipeline's folder; the grid is the job's preview.
    /// </summary>
    public async Task<string> RunPipelineAsync(DiffusionPipeline pipeline, string model, string reference, string referenceName, long seed,
        IProgress<StageProgress> progress, CancellationToken cancellationToken)
    {
        var report = await pipeline.EvaluateStableDiffusionAsync(new StableDiffusionEvalRequest
        {
            ModelPath = model,
            ReferencePath = reference,
            Prompts = [PipelinePrompt],
            ImagesPerPrompt = PipelineImages,
            Steps = Steps,
            GuidanceScale = StableDiffusionSampleRunner.DefaultGuidanceScale,
            Seed = seed,
            GridPath = Path.Combine(model, PruneJob.QuickLookFile),
        }, progress, cancellationToken);
        // names and hashes in the saved report, never local paths
        (report with { Model = SourceIdentity.Describe(model), Reference = SourceIdentity.Describe(reference), Grid = PruneJob.QuickLookFile })
            .Save(Path.Combine(model, ModelFolder.EvalReport));
        var inv = CultureInfo.InvariantCulture;
        return string.Create(inv,
            $"Quick look ({PipelineImages} images of \"{PipelinePrompt}\" from {referenceName} and this pipeline, same seed, {Steps} steps, guidance {report.GuidanceScale}, in TorchSharp): ") +
            string.Create(inv, $"SSIM to {referenceName} {report.Ssim.Mean:F3}, PSNR {report.Psnr.Mean:F1} dB, latent MSE / variance {report.LatentRelativeMse.Mean:F3}; ") +
            "no FID-proxy for pipelines (it measures against MNIST)";
    }
}

/// <summary>
/// Prunes a model and evaluates the result against the original, through the core's <see cref="DiffusionPipeline"/>:
/// the original is loaded once, the pruned model goes to evaluation in memory, and the page sees every iteration's
/// figures, the first sample grid and the log. Cancelling stops at the next iteration or step; the output folder is
/// written whole or not at all.
/// </summary>
public sealed class PruneJob(PruneRequest request, QuickEvaluation? evaluation = null) : StudioJob
{
    /// <summary>The request the job runs.</summary>
    public PruneRequest Request { get; } = request;

    /// <summary>A pruned or distilled pipeline's quick look grid (one row per image: the original | the pipeline | 4 x their difference), beside its eval_report.json.</summary>
    public const string QuickLookFile = "quick_look.png";

    /// <summary>The evaluation after pruning; null skips it.</summary>
    public QuickEvaluation? Evaluation { get; } = evaluation;

    /// <inheritdoc />
    public override string Kind => "prune";

    /// <inheritdoc />
    public override string? OutputPath => Request.OutputPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(new StoredPrune(Request, Evaluation is not null, Evaluation?.OnnxCache));

    /// <summary>What a prune job stores to be run again.</summary>
    internal sealed record StoredPrune(PruneRequest Request, bool Evaluate, string? OnnxCache = null);

    /// <inheritdoc />
    public override string Name => string.Create(CultureInfo.InvariantCulture,
        $"Prune {Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath))} with {Request.Method} to remove {Request.TargetParams:0.#%}{BudgetSuffix}");

    private string BudgetSuffix => Pruning.Importance.ImportanceCriteria.Find(Request.Method)?.RemovesLayers == true && Request.Budget != Pruning.Layers.LayerBudget.Params
        ? $" of the {Request.Budget.ToString().ToLowerInvariant()}" : "";

    /// <summary>Where the job's share of the overall progress bar goes: pruning, then evaluating.</summary>
    private double PruneShare => Evaluation is null ? 1.0 : 0.75;

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        using var pipeline = new DiffusionPipeline();
        var pruned = await pipeline.PruneAsync(Request, Forward(progress, 0, PruneShare), cancellationToken);
        var report = pruned.Report;
        string result = string.Create(CultureInfo.InvariantCulture,
            $"{report.Method}: removed {report.AchievedParams:P1} of the parameters ({report.ParametersBefore:N0} → {report.ParametersAfter:N0}), " +
            $"MACs {report.MacsBefore:N0} → {report.MacsAfter:N0}, in {report.Seconds:F1} s; saved to {Request.OutputPath}");
        if (report.Layers is { } layers)
        {
            result += string.Create(CultureInfo.InvariantCulture,
                $". Removed {layers.Removed.Count} layer{(layers.Removed.Count == 1 ? "" : "s")} ({layers.SelectionName}, {layers.AchievedFraction:P1} of the {layers.Unit}): {string.Join(", ", layers.Removed)}");
            if (layers.Additivity?.PearsonR is double r)
                result += string.Create(CultureInfo.InvariantCulture, $". Additivity over {layers.Additivity.Samples.Count} random layer subsets: Pearson r {r:F3}, Spearman rho {layers.Additivity.SpearmanRho:F3}");
        }
        bool sd = StableDiffusionPipeline.IsStableDiffusionFolder(Request.ModelPath);
        if (sd && Request.OutputPath is { } written) QuickEvaluation.DropInheritedQuickLook(written);
        if (Evaluation is { } quick && sd)
            result += ". " + await quick.RunPipelineAsync(pipeline, Request.OutputPath!, Request.ModelPath, "the original", Request.Seed,
                Forward(progress, PruneShare, 1 - PruneShare), cancellationToken);
        else if (Evaluation is { } quick2)
            result += ". " + await quick2.RunAsync(pipeline, Request.OutputPath!, Request.ModelPath, "the original", Request.Seed,
                Forward(progress, PruneShare, 1 - PruneShare), cancellationToken);
        progress.Report(new JobProgress(1, result, Note: true));
        Result = result;
    }

    /// <summary>The pipeline's progress as the Studio's, with the stage's fraction placed in its share of the bar.</summary>
    internal static IProgress<StageProgress> Forward(IProgress<JobProgress> progress, double start, double share) =>
        new SynchronousProgress<StageProgress>(p =>
        {
            string stage = p.Stage.ToString().ToLowerInvariant();
            if (p.Fraction is not double fraction)
            {
                progress.Report(new JobProgress(start, p.Message, Preview: p.Preview, Note: true, Stage: stage));
                return;
            }
            string message = p.Done is long done && p.Total is long total
                ? string.Create(CultureInfo.InvariantCulture, $"{p.Stage} {done}/{total}: {p.Message}")
                : p.Message;
            progress.Report(new JobProgress(start + share * fraction, message, p.Metrics, p.Preview, p.Done, Note: p.Done is null && p.Metrics is null, Stage: stage));
        });
}
