using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference;
using DiffusionPrune.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pipeline.StableDiffusion;

/// <summary>What <c>dprune eval</c> measures on a Stable Diffusion pipeline against its reference (usually its original).</summary>
public sealed record StableDiffusionEvalRequest
{
    public required string ModelPath { get; init; }
    public required string ReferencePath { get; init; }

    /// <summary>Prompts to sample; null takes <see cref="StableDiffusionEvaluator.DefaultPrompts"/>.</summary>
    public IReadOnlyList<string>? Prompts { get; init; }

    public int ImagesPerPrompt { get; init; } = 2;
    public int Steps { get; init; } = 25;
    public double GuidanceScale { get; init; } = StableDiffusionSampleRunner.DefaultGuidanceScale;
    public string NegativePrompt { get; init; } = "";
    public long Seed { get; init; }
    public string SchedulerName { get; init; } = "ddim";

    /// <summary>Where to write the same-seed grid (reference | model | 4 x |difference| per image); null: none.</summary>
    public string? GridPath { get; init; }
}

/// <summary>A mean over images with its spread and its worst image.</summary>
public sealed record PairedFigure(double Mean, double Std, double Worst)
{
    public JsonObject ToJson() => new() { ["mean"] = Mean, ["std"] = Std, ["worst"] = Worst };
}

/// <summary>One pipeline's cost: its U-Net's parameters and MACs per image, the whole pipeline's parameters, and the time of a sampled step.</summary>
public sealed record PipelineCost(long UnetParameters, long UnetMacs, long PipelineParameters, double MillisecondsPerStep)
{
    public JsonObject ToJson() => new()
    {
        ["unet_parameters"] = UnetParameters, ["unet_macs"] = UnetMacs, ["pipeline_parameters"] = PipelineParameters,
        ["ms_per_step"] = MillisecondsPerStep,
    };
}

/// <summary>The evaluation of a pipeline against its reference from the same prompts and noise.</summary>
public sealed record StableDiffusionEvalReport(
    string Model, string Reference, IReadOnlyList<string> Prompts, int ImagesPerPrompt, int Steps, string Scheduler, double GuidanceScale, long Seed,
    PairedFigure Ssim, PairedFigure Psnr, PairedFigure LatentRelativeMse, double LatentStatisticShift,
    PipelineCost ModelCost, PipelineCost ReferenceCost, string? Grid)
{
    public int Images => Prompts.Count * ImagesPerPrompt;

    public JsonObject ToJson() => new()
    {
        ["kind"] = "stable_diffusion_eval",
        ["model"] = Model,
        ["reference"] = Reference,
        ["prompts"] = new JsonArray(Prompts.Select(p => (JsonNode?)JsonValue.Create(p)).ToArray()),
        ["images_per_prompt"] = ImagesPerPrompt,
        ["images"] = Images,
        ["steps"] = Steps,
        ["scheduler"] = Scheduler,
        ["guidance_scale"] = GuidanceScale,
        ["seed"] = Seed,
        ["ssim"] = Ssim.ToJson(),
        ["psnr_db"] = Psnr.ToJson(),
        ["latent_relative_mse"] = LatentRelativeMse.ToJson(),
        ["latent_statistic_shift"] = LatentStatisticShift,
        ["model_cost"] = ModelCost.ToJson(),
        ["reference_cost"] = ReferenceCost.ToJson(),
        ["unet_parameters_removed"] = 1.0 - (double)ModelCost.UnetParameters / ReferenceCost.UnetParameters,
        ["unet_macs_removed"] = 1.0 - (double)ModelCost.UnetMacs / ReferenceCost.UnetMacs,
        ["step_speedup"] = ReferenceCost.MillisecondsPerStep / ModelCost.MillisecondsPerStep,
        ["grid"] = Grid,
        [ReportJson.NotesField] = new JsonArray(
            "No distribution figure (FID) is made for pipelines: that needs an image feature network for natural images and real images, which are not shipped. " +
            "The figures are paired fidelity to the reference from the same prompt and noise: SSIM and PSNR on the [0, 1] images, the final latents' MSE over " +
            "the reference latents' variance, and LD-Pruner's statistic ||mean - mean_ref|| + ||std - std_ref|| of the final latents over the samples."),
    };

    public void Save(string path) => ReportJson.Write(path, ToJson());
}

/// <summary>
/// Evaluates a Stable Diffusion pipeline (pruned, distilled) against a reference pipeline: each prompt's images are
/// sampled by both from the same noise, and compared pair by pair (SSIM, PSNR, latent MSE), over the set (LD-Pruner's
/// latent statistic), and by cost (U-Net parameters and MACs, time per sampled step). Optionally writes the same-seed grid.
/// </summary>
public static class StableDiffusionEvaluator
{
    /// <summary>The prompts evaluated by default: none of them is among the calibration prompts pruning and distillation use by default.</summary>
    public static IReadOnlyList<string> DefaultPrompts { get; } =
    [
        "a lighthouse on a rocky coast under a cloudy sky",
        "a plate of pasta with tomato sauce and basil",
        "a black cat sleeping on a windowsill",
        "a watercolor painting of a village in the hills",
        "an old man reading a newspaper in a park",
        "a snowy forest road at dusk",
        "a close-up of a yellow sunflower",
        "a futuristic city skyline with flying cars",
    ];

    /// <param name="progress">Called after each prompt's images from one pipeline: (done, total), total being twice the prompts.</param>
    /// <param name="grid">
    /// Receives the same-seed grid as a PNG (one row per image: reference | model | 4 x |difference|; images under 128
    /// pixels enlarged) before the report is returned; the grid is made only when this or <see cref="StableDiffusionEvalRequest.GridPath"/> asks.
    /// </param>
    public static StableDiffusionEvalReport Evaluate(StableDiffusionEvalRequest request, Device? device = null, Action<int, int>? progress = null,
        CancellationToken cancellationToken = default, Action<PreviewImage>? grid = null)
    {
        var prompts = request.Prompts ?? DefaultPrompts;
        if (prompts.Count == 0) throw new ArgumentException("Give at least one prompt to evaluate on.");
        if (request.ImagesPerPrompt < 1) throw new ArgumentException("--samples (images per prompt) must be at least 1.");
        if (request.Steps < 1) throw new ArgumentException("--steps must be at least 1.");
        foreach (var path in new[] { request.ModelPath, request.ReferencePath })
            if (!StableDiffusionPipeline.IsStableDiffusionFolder(path))
                throw new ArgumentException($"'{path}' is not a Stable Diffusion pipeline folder (model_index.json naming {StableDiffusionPipeline.ClassName}); " +
                    "a pipeline is evaluated against a pipeline.");

        var options = new SampleOptions(request.Steps, request.GuidanceScale);
        using var model = StableDiffusionPipeline.Load(request.ModelPath, request.SchedulerName, device: device);
        using var reference = StableDiffusionPipeline.Load(request.ReferencePath, request.SchedulerName, device: device);
        if (model.Unet.InChannels != reference.Unet.InChannels || model.VaeScaleFactor != reference.VaeScaleFactor
            || !model.Unet.SampleSize.SequenceEqual(reference.Unet.SampleSize))
            throw new ArgumentException($"'{request.ModelPath}' and '{request.ReferencePath}' do not sample the same latents (channels, size or VAE factor differ); " +
                "compare a pipeline with the one it was pruned from.");

        var images = new List<Tensor>();
        var referenceImages = new List<Tensor>();
        var latents = new List<Tensor>();
        var referenceLatents = new List<Tensor>();
        double modelSeconds = 0, referenceSeconds = 0;
        int total = prompts.Count * 2, done = 0;
        try
        {
            for (int p = 0; p < prompts.Count; p++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                long seed = request.Seed + p; // each prompt its own noise, the same for both pipelines
                var clock = Stopwatch.StartNew();
                using (var output = reference.Generate(prompts[p], request.NegativePrompt, request.ImagesPerPrompt, seed, options))
                {
                    referenceSeconds += clock.Elapsed.TotalSeconds;
                    referenceImages.Add(output.Image01.cpu().clone());
                    referenceLatents.Add(output.Latents.cpu().clone());
                }
                progress?.Invoke(++done, total);
                clock.Restart();
                using (var output = model.Generate(prompts[p], request.NegativePrompt, request.ImagesPerPrompt, seed, options))
                {
                    modelSeconds += clock.Elapsed.TotalSeconds;
                    images.Add(output.Image01.cpu().clone());
                    latents.Add(output.Latents.cpu().clone());
                }
                progress?.Invoke(++done, total);
            }

            using var scope = NewDisposeScope();
            var x = cat(images, 0);
            var y = cat(referenceImages, 0);
            var z = cat(latents, 0).to_type(ScalarType.Float64);
            var zRef = cat(referenceLatents, 0).to_type(ScalarType.Float64);
            foreach (var (name, t) in new[] { ("images", x), ("latents", z) })
                if (!t.isfinite().all().item<bool>())
                    throw new InvalidOperationException($"'{request.ModelPath}' sampled non-finite {name}; the pipeline is broken (a NaN is never a score).");

            var ssim = Figure(ImageSimilarity.SsimPerImage(x, y, dataRange: 1.0), lowerIsWorse: true);
            var psnr = Figure(ImageSimilarity.PsnrPerImage(x, y, dataRange: 1.0), lowerIsWorse: true);
            long n = z.shape[0];
            var variance = zRef.var().item<double>();
            var latentMse = Figure((z - zRef).pow(2).reshape(n, -1).mean([1]) / variance, lowerIsWorse: false);
            double shift = Math.Sqrt((z.mean([0]) - zRef.mean([0])).pow(2).sum().item<double>())
                           + (n > 1 ? Math.Sqrt((z.std(0) - zRef.std(0)).pow(2).sum().item<double>()) : 0);

            string? gridFile = null;
            if (request.GridPath is not null || grid is not null)
            {
                // one row per image: reference | model | 4 x |difference|, in [-1, 1] as the grid expects
                var difference = ((x - y).abs() * 4).clamp(0, 1);
                var rows = stack([y, x, difference], 1).reshape(-1, x.shape[1], x.shape[2], x.shape[3]);
                if (request.GridPath is { } gridPath)
                {
                    // written beside and renamed: a grid there may be a hard link into another pipeline's folder, which must not change
                    Runtime.AtomicFile.Replace(gridPath, path => ImageGrid.Save(path, rows * 2 - 1, columns: 3));
                    gridFile = gridPath;
                }
                if (grid is not null)
                {
                    int scale = Math.Max(1, 128 / (int)x.shape[^1]); // tiny pipelines are enlarged, real ones shown as they are
                    var (png, width, height) = ImageGrid.Png(rows * 2 - 1, columns: 3, scale: scale);
                    string sampled = prompts.Count == 1 ? $"\"{prompts[0]}\"" : string.Create(CultureInfo.InvariantCulture, $"{prompts.Count} prompts");
                    grid(new PreviewImage(png, width, height, string.Create(CultureInfo.InvariantCulture,
                        $"{sampled} x {request.ImagesPerPrompt}, seed {request.Seed}, {request.Steps} steps, guidance {request.GuidanceScale}: one row per image, the reference | the model | 4 x their difference")));
                }
            }

            double steps = (double)prompts.Count * request.Steps;
            return new StableDiffusionEvalReport(request.ModelPath, request.ReferencePath, prompts, request.ImagesPerPrompt, request.Steps,
                request.SchedulerName, request.GuidanceScale, request.Seed, ssim, psnr, latentMse, shift,
                Cost(model, modelSeconds * 1000 / steps), Cost(reference, referenceSeconds * 1000 / steps), gridFile);
        }
        finally
        {
            foreach (var t in images.Concat(referenceImages).Concat(latents).Concat(referenceLatents)) t.Dispose();
        }
    }

    private static PairedFigure Figure(Tensor perImage, bool lowerIsWorse)
    {
        var values = perImage.to_type(ScalarType.Float64).cpu().data<double>().ToArray();
        double mean = values.Average();
        double std = values.Length > 1 ? Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Length - 1)) : 0;
        return new PairedFigure(mean, std, lowerIsWorse ? values.Min() : values.Max());
    }

    /// <summary>The U-Net's parameters and MACs per image (at its sample size), the pipeline's parameters, and the measured time of a step (all its images, guided).</summary>
    private static PipelineCost Cost(StableDiffusionPipeline pipeline, double millisecondsPerStep)
    {
        var unet = ModelCost.Measure(pipeline.Unet);
        long all = new nn.Module[] { pipeline.Unet, pipeline.TextEncoder, pipeline.Vae }.Sum(m => m.parameters().Sum(p => p.numel()));
        return new PipelineCost(unet.Parameters, unet.Macs, all, millisecondsPerStep);
    }

    /// <summary>The report as rows for a console.</summary>
    public static IReadOnlyList<(string, string)> Rows(StableDiffusionEvalReport r) =>
    [
        ("model", r.Model),
        ("reference", r.Reference),
        ("images", string.Create(CultureInfo.InvariantCulture, $"{r.Prompts.Count} prompts x {r.ImagesPerPrompt}, {r.Steps} steps ({r.Scheduler}), guidance {r.GuidanceScale}, seed {r.Seed}")),
        ("U-Net parameters", string.Create(CultureInfo.InvariantCulture, $"{r.ModelCost.UnetParameters:N0} of {r.ReferenceCost.UnetParameters:N0} ({1 - (double)r.ModelCost.UnetParameters / r.ReferenceCost.UnetParameters:P1} removed)")),
        ("U-Net MACs / image", string.Create(CultureInfo.InvariantCulture, $"{r.ModelCost.UnetMacs:N0} of {r.ReferenceCost.UnetMacs:N0} ({1 - (double)r.ModelCost.UnetMacs / r.ReferenceCost.UnetMacs:P1} removed)")),
        ("ms / step", string.Create(CultureInfo.InvariantCulture, $"{r.ModelCost.MillisecondsPerStep:F1} (reference {r.ReferenceCost.MillisecondsPerStep:F1}, {r.ReferenceCost.MillisecondsPerStep / r.ModelCost.MillisecondsPerStep:F2}x)")),
        ("SSIM to reference", string.Create(CultureInfo.InvariantCulture, $"{r.Ssim.Mean:F4} ± {r.Ssim.Std:F4} (worst {r.Ssim.Worst:F4})")),
        ("PSNR to reference", string.Create(CultureInfo.InvariantCulture, $"{r.Psnr.Mean:F2} ± {r.Psnr.Std:F2} dB (worst {r.Psnr.Worst:F2})")),
        ("latent MSE / var", string.Create(CultureInfo.InvariantCulture, $"{r.LatentRelativeMse.Mean:F4} ± {r.LatentRelativeMse.Std:F4} (worst {r.LatentRelativeMse.Worst:F4})")),
        ("latent statistic shift", string.Create(CultureInfo.InvariantCulture, $"{r.LatentStatisticShift:F4} (LD-Pruner's ||Δmean|| + ||Δstd||)")),
    ];
}
