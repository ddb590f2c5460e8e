using System.Diagnostics;
using System.Globalization;
using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pipeline.StableDiffusion;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>What a comparison of Stable Diffusion pipelines draws: one prompt, the same seed for every pipeline.</summary>
/// <param name="PipelinePaths">2 to 6 pipeline folders, the reference (the original) first.</param>
/// <param name="Names">Their names as the Studio lists them.</param>
/// <param name="OutputPath">The PNG the grid is written to (one row per pipeline).</param>
public sealed record PipelineCompareRequest(
    IReadOnlyList<string> PipelinePaths, IReadOnlyList<string> Names, string Prompt, string? NegativePrompt, double GuidanceScale, int Steps,
    int Images, long Seed, string OutputPath);

/// <summary>
/// Compares Stable Diffusion pipelines (an original and its pruned copies) from a prompt, which the core's comparison
/// (FID-proxy against MNIST, ONNX latency) does not do (their paired figures come from an evaluation, <see cref="PipelineEvaluateJob"/>): each pipeline draws the same images of the same prompt from the
/// same seed, so the same starting noise, in TorchSharp. The grid has one row per pipeline, reference on top; the result
/// names each row with its U-Net's parameters and its time per step.
/// </summary>
public sealed class PipelineCompareJob(PipelineCompareRequest request) : StudioJob
{
    /// <summary>The request the job runs.</summary>
    public PipelineCompareRequest Request { get; } = request;

    /// <inheritdoc />
    public override string Kind => "compare-pipelines";

    /// <inheritdoc />
    public override string? OutputPath => Request.OutputPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(Request);

    /// <inheritdoc />
    public override string Name => $"Compare {string.Join(", ", Request.Names)} on \"{(Request.Prompt.Length > 40 ? Request.Prompt[..37] + "..." : Request.Prompt)}\"";

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        var inv = CultureInfo.InvariantCulture;
        using var pipeline = new DiffusionPipeline();
        string temp = Directory.CreateTempSubdirectory("dprune-compare-pipelines-").FullName;
        var images = new List<TorchSharp.torch.Tensor>();
        var rows = new List<string>();
        try
        {
            int count = Request.PipelinePaths.Count;
            for (int i = 0; i < count; i++)
            {
                string output = Path.Combine(temp, $"{i}.safetensors"); // safetensors keep the decoded images for the grid
                var clock = Stopwatch.StartNew();
                var sampled = await pipeline.SampleAsync(new SampleRequest
                {
                    ModelPath = Request.PipelinePaths[i],
                    Prompt = Request.Prompt,
                    NegativePrompt = Request.NegativePrompt,
                    GuidanceScale = Request.GuidanceScale,
                    Steps = Request.Steps,
                    Count = Request.Images,
                    Seed = Request.Seed,
                    OutputPath = output,
                }, PruneJob.Forward(progress, (double)i / count, 1.0 / count), cancellationToken);
                double perStep = clock.Elapsed.TotalMilliseconds / Request.Steps; // loading and decoding included: a user's wait per step
                sampled.Final.Dispose();
                sampled.Trajectory?.Dispose();
                using (var file = SafetensorsFile.Open(output))
                    images.Add(file.ReadFloat("image"));
                long unet = UnetParameters(Request.PipelinePaths[i]);
                rows.Add(string.Create(inv, $"row {i + 1}: {Request.Names[i]} (U-Net {unet:N0} parameters, {perStep:F0} ms per step with loading)"));
            }
            using var all = TorchSharp.torch.cat(images, 0);
            int scale = Math.Max(1, 128 / (int)all.shape[^1]); // tiny test pipelines are enlarged, real ones shown as they are
            var (png, width, height) = ImageGrid.Png(all, columns: Request.Images, scale: scale);
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(Request.OutputPath))!);
            Runtime.AtomicFile.Replace(Request.OutputPath, path => File.WriteAllBytes(path, png));
            string caption = string.Create(inv, $"\"{Request.Prompt}\", seed {Request.Seed}, {Request.Steps} steps, guidance {Request.GuidanceScale}: one row per pipeline, {Request.Names[0]} on top");
            progress.Report(new JobProgress(1, "grid", Preview: new PreviewImage(png, width, height, caption), Note: true));
        }
        finally
        {
            foreach (var image in images) image.Dispose();
            try { Directory.Delete(temp, recursive: true); }
            catch (IOException) { /* a leftover temp folder harms nothing */ }
        }
        string result = string.Create(inv,
            $"Compared {Request.PipelinePaths.Count} pipelines on \"{Request.Prompt}\" ({Request.Images} images each, same seed {Request.Seed}, {Request.Steps} steps, guidance {Request.GuidanceScale}, TorchSharp): ") +
            string.Join("; ", rows) + ". No FID-proxy or SSIM here: evaluate a pipeline against its original (SSIM, PSNR from the same prompts and noise) from its page.";
        progress.Report(new JobProgress(1, result, Note: true));
        Result = result;
    }

    /// <summary>The U-Net's parameters, from its safetensors headers.</summary>
    private static long UnetParameters(string pipeline) =>
        Catalog.PipelineComponents.Describe(pipeline).FirstOrDefault(c => c.Name == "unet")?.Parameters ?? 0;
}
