using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Text.Json;
using DiffusionPrune.Analysis;
using DiffusionPrune.Data;
using DiffusionPrune.Inference;
using DiffusionPrune.Metrics;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Evaluation;

/// <summary>What to evaluate and how; defaults match the model cards.</summary>
public sealed record EvalRequest
{
    public required string ModelPath { get; init; }
    public string? SchedulerConfigPath { get; init; }
    public string? SchedulerName { get; init; } = "ddim";
    public int Samples { get; init; } = 1000;
    public int Steps { get; init; } = 25;
    public double Eta { get; init; }
    public double GuidanceScale { get; init; } = 1.0;
    public long Seed { get; init; }
    public int BatchSize { get; init; } = 100;
    /// <summary>A second model sampled from the same noise, for paired SSIM/PSNR (e.g. the unpruned original).</summary>
    public string? ReferenceModelPath { get; init; }
    public string? FeatureNetFolder { get; init; }
    public int BootstrapResamples { get; init; } = 200;
    /// <summary>torch (a diffusers folder) | onnx (an exported bundle); the reference model uses the same backend.</summary>
    public string Backend { get; init; } = "torch";
    /// <summary>ONNX Runtime execution provider for the onnx backend: auto | cpu | directml | cuda.</summary>
    public string Provider { get; init; } = "auto";
    /// <summary>
    /// The real images to compare with: null or "mnist" for the MNIST test split, or a folder of PNG/JPEG images (resized
    /// to the model's size and channels, as <c>--data</c> reads them for training).
    /// </summary>
    public string? Data { get; init; }
}

public sealed record EvalReport(
    string Model, string ClassName, long Parameters, long Macs, int Samples, int Steps, string Scheduler, double GuidanceScale, long Seed,
    FidResult Fid, KidResult Kid, PrecisionRecallResult PrecisionRecall, double? ClassAccuracy, double? Ssim, double? Psnr,
    double SamplerMillisecondsPerImage, double TotalSeconds, string Runtime = "torch", string Reference = ModelEvaluator.MnistReference,
    int BatchSize = 0)
{
    /// <summary>One sampling step's time for a batch of <see cref="BatchSize"/>, from the median time per image; null when the batch is not recorded.</summary>
    public double? SamplerMillisecondsPerStep => BatchSize > 0 && Steps > 0 ? SamplerMillisecondsPerImage * Math.Min(BatchSize, Samples) / Steps : null;

    public JsonObject ToJson() => new()
    {
        ["model"] = Formats.SourceIdentity.Describe(Model), // a name and hash, never a local path
        ["class"] = ClassName,
        ["parameters"] = Parameters,
        ["macs"] = Macs,
        ["samples"] = Samples,
        ["steps"] = Steps,
        ["scheduler"] = Scheduler,
        ["guidance_scale"] = GuidanceScale,
        ["seed"] = Seed,
        ["fid_proxy"] = new JsonObject { ["value"] = Fid.Value, ["lower"] = Fid.Lower, ["upper"] = Fid.Upper, ["sample_count"] = Fid.SampleCount, ["confidence"] = 0.95 },
        ["kid"] = new JsonObject { ["mean"] = Kid.Mean, ["std"] = Kid.Std, ["subset_size"] = Kid.SubsetSize, ["subsets"] = Kid.SubsetCount },
        ["precision"] = PrecisionRecall.Precision,
        ["recall"] = PrecisionRecall.Recall,
        ["class_accuracy"] = ClassAccuracy,
        ["ssim_to_reference"] = Ssim,
        ["psnr_to_reference"] = Psnr,
        ["sampler_ms_per_image"] = SamplerMillisecondsPerImage,
        ["sampler_ms_per_step"] = SamplerMillisecondsPerStep,
        ["batch_size"] = Math.Min(BatchSize, Samples),
        ["total_seconds"] = TotalSeconds,
        ["runtime"] = Runtime,
        ["reference"] = Reference,
        ["feature_space"] = ModelEvaluator.FeatureSpace,
    };

    /// <summary>Writes the report through <see cref="Formats.ReportJson"/>: a non-finite figure (PSNR of identical images) never loses it.</summary>
    public void Save(string path) => Formats.ReportJson.Write(path, ToJson());
}

/// <summary>
/// Samples N images from a model (fixed seeds, batch by batch) and measures them with the project's
/// feature network against real images (the MNIST test split, or a folder of the user's images): FID-proxy with a
/// bootstrap interval, KID, precision/recall, classifier accuracy of conditional samples (MNIST only), paired SSIM/PSNR
/// to a reference model, parameters, MACs and sampler latency.
/// </summary>
public static class ModelEvaluator
{
    /// <summary>The default real images.</summary>
    public const string MnistReference = "MNIST test split";

    /// <summary>
    /// Where the proxies are measured: the project's feature network, trained on MNIST digits. Other images (a folder,
    /// RGB, another size) go through it as grey 32 x 32 (BT.601 luma, bilinear resize), so their figures compare models
    /// with each other on the same images, not with published FIDs.
    /// </summary>
    public const string FeatureSpace = "MNIST feature net (grey 32 x 32)";

    /// <param name="device">The torch device (the onnx backend samples on the CPU and runs the network on request.Provider).</param>
    /// <param name="report">Receives the onnx backend's provider lines (fallbacks, then the provider that runs).</param>
    public static EvalReport Evaluate(EvalRequest request, Device device, Action<int, int>? progress = null, Action<string>? report = null,
        CancellationToken cancel = default)
    {
        using var model = InferenceModel.Load(request.ModelPath, request.Backend, device, request.Provider, report);
        using var reference = request.ReferenceModelPath is null ? null
            : InferenceModel.Load(request.ReferenceModelPath, request.Backend, device, request.Provider, report);
        return Evaluate(request, model, reference, progress, cancel);
    }

    /// <summary>
    /// Evaluates models already loaded (a pipeline's hand-off): <paramref name="model"/> as <see cref="EvalRequest.ModelPath"/>
    /// names it in the report, <paramref name="reference"/> (or null) for paired SSIM/PSNR. Cancelling stops after the batch being sampled.
    /// </summary>
    public static EvalReport Evaluate(EvalRequest request, InferenceModel model, InferenceModel? reference, Action<int, int>? progress = null,
        CancellationToken cancel = default, Action<Tensor>? firstBatch = null)
    {
        if (request.Samples < 2) throw new ArgumentException("--samples must be at least 2 (FID needs a covariance).");
        var total = Stopwatch.StartNew();
        var device = model.Device;
        bool mnist = request.Data is null || request.Data == ImageDatasets.Mnist;
        if (mnist && (model.InChannels != 1 || model.SampleSize[0] != 32))
            throw new ArgumentException($"Evaluation compares against MNIST (1 x 32 x 32) unless --data names a folder of images; {model.ClassName} makes " +
                $"{model.InChannels} x {model.SampleSize[0]} x {model.SampleSize[1]}.");
        string schedulerPath = request.SchedulerConfigPath ?? model.FindSchedulerConfig()
            ?? throw new FileNotFoundException($"'{request.ModelPath}' has no scheduler_config.json; pass --scheduler-config.");
        using var featureNet = FeatureNet.Load(request.FeatureNetFolder);
        IImageDataset data = mnist ? MnistDataset.Load().Test
            : Directory.Exists(request.Data) ? ImageFolderDataset.Load(request.Data!, model.InChannels, model.SampleSize[0], model.SampleSize[^1])
            : throw new DirectoryNotFoundException($"--data '{request.Data}' is neither mnist nor a folder of images.");
        if (data.Count < 2) throw new ArgumentException($"The {data.Name} holds {data.Count} image; the statistics need at least 2.");

        var (generated, labels, reproduced, msPerImage) = Generate(model, reference, schedulerPath, request, device, progress, cancel, firstBatch);
        // Paused: TorchSharp's implicit scalars must outlive the native calls that read them (see GcPause).
        return GcPause.Run(() => Score(model, request, featureNet, data, mnist, generated, labels, reproduced, msPerImage, total));
    }

    /// <summary>Images as the feature network takes them: 1 x 32 x 32 (BT.601 luma of RGB, bilinear resize of other sizes).</summary>
    public static Tensor FeatureInput(Tensor images)
    {
        var x = images;
        if (x.shape[1] == 3)
            x = (x[.., 0..1] * 0.299 + x[.., 1..2] * 0.587 + x[.., 2..3] * 0.114);
        else if (x.shape[1] != 1)
            x = x.mean([1], keepdim: true);
        if (x.shape[2] != 32 || x.shape[3] != 32)
            x = nn.functional.interpolate(x, [32, 32], mode: InterpolationMode.Bilinear, align_corners: false);
        return x;
    }

    private static EvalReport Score(InferenceModel model, EvalRequest request, FeatureNet featureNet, IImageDataset data, bool mnist, Tensor generated,
        Tensor? labels, Tensor? reproduced, double msPerImage, Stopwatch total)
    {
        using var scope = NewDisposeScope();
        var generatedFeatures = featureNet.FeaturesOf(FeatureInput(generated)).to_type(ScalarType.Float64);
        var realImages = data.Images(Enumerable.Range(0, data.Count).ToArray());
        var realFeatures = featureNet.FeaturesOf(FeatureInput(realImages)).to_type(ScalarType.Float64);

        string? statsFolder = request.FeatureNetFolder ?? FeatureNet.DefaultFolder();
        string statsPath = Path.Combine(statsFolder!, FeatureNet.ReferenceStatsName);
        // the cached statistics are the MNIST test split's; a folder's are computed from its images
        var referenceStats = mnist && File.Exists(statsPath) ? GaussianStats.Load(statsPath) : GaussianStats.FromFeatures(realFeatures);
        var fid = FrechetDistance.ComputeWithInterval(referenceStats, generatedFeatures, request.BootstrapResamples, 0.95, request.Seed);
        int subset = Math.Min(1000, Math.Min(request.Samples, (int)realFeatures.shape[0]));
        var kid = KernelInceptionDistance.Compute(realFeatures, generatedFeatures, subset, 50, request.Seed);
        var pr = PrecisionRecall.Compute(realFeatures, generatedFeatures);

        double? accuracy = null;
        if (labels is not null && mnist) // the feature net's classes are MNIST's digits
            accuracy = ClassifierAccuracy.Compute(featureNet.LogitsOf(generated), labels);
        double? ssim = null, psnr = null;
        if (reproduced is not null)
        {
            ssim = ImageSimilarity.Ssim(generated.clamp(-1, 1), reproduced.clamp(-1, 1));
            psnr = ImageSimilarity.Psnr(generated.clamp(-1, 1), reproduced.clamp(-1, 1));
        }
        var (parameters, macs) = model.Cost();
        return new EvalReport(request.ModelPath, model.ClassName, parameters, macs, request.Samples, request.Steps,
            request.SchedulerName ?? "from config", request.GuidanceScale, request.Seed, fid, kid, pr, accuracy, ssim, psnr, msPerImage,
            total.Elapsed.TotalSeconds, model.Runtime,
            mnist ? MnistReference : $"folder '{Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(request.Data!)))}': " +
                $"{data.Count:N0} images as {model.InChannels} x {model.SampleSize[0]} x {model.SampleSize[^1]}", // its name, never its path
            request.BatchSize);
    }

    /// <summary>Samples in batches with per-batch seeds, so N images are the same whatever the batch size divides.</summary>
    public static (Tensor images, Tensor? labels, Tensor? reference, double msPerImage) Generate(InferenceModel model, InferenceModel? referenceModel,
        string schedulerPath, EvalRequest request, Device device, Action<int, int>? progress = null, CancellationToken cancel = default,
        Action<Tensor>? firstBatch = null)
    {
        using var scheduler = Scheduler.FromFile(schedulerPath, request.SchedulerName, request.Eta);
        var images = new List<Tensor>();
        var references = new List<Tensor>();
        var allLabels = new List<Tensor>();
        var batchMillis = new List<double>();
        int done = 0;
        for (int start = 0, batch = 0; start < request.Samples; start += request.BatchSize, batch++)
        {
            cancel.ThrowIfCancellationRequested();
            int count = Math.Min(request.BatchSize, request.Samples - start);
            using var scope = NewDisposeScope();
            var generator = new Generator((ulong)(request.Seed * 100_003 + batch), CPU);
            var noise = randn([count, model.InChannels, model.SampleSize[0], model.SampleSize[1]], generator: generator).to(device);
            Tensor? labels = model.NumClasses is int classes ? (arange(start, start + count, ScalarType.Int64) % classes).to(device) : null;
            var options = new SampleOptions(request.Steps, request.GuidanceScale);
            var watch = Stopwatch.StartNew();
            var result = model.Sample(scheduler.CloneFresh(), noise, labels, options, new Generator((ulong)(request.Seed + 17 + batch), device));
            batchMillis.Add(watch.Elapsed.TotalMilliseconds / count);
            images.Add(result.Final.cpu().MoveToOuterDisposeScope());
            if (batch == 0) firstBatch?.Invoke(images[0]);
            if (labels is not null) allLabels.Add(labels.cpu().MoveToOuterDisposeScope());
            if (referenceModel is not null)
            {
                var again = referenceModel.Sample(scheduler.CloneFresh(), noise, labels, options, new Generator((ulong)(request.Seed + 17 + batch), device));
                references.Add(again.Final.cpu().MoveToOuterDisposeScope());
            }
            done += count;
            progress?.Invoke(done, request.Samples);
            NativeMemory.Trim();
        }
        batchMillis.Sort();
        double median = batchMillis[batchMillis.Count / 2];
        return (cat(images), allLabels.Count > 0 ? cat(allLabels) : null, references.Count > 0 ? cat(references) : null, median);
    }
}
