using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Models;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Inference;

/// <summary>Everything <c>dprune sample</c> needs, independent of the command line.</summary>
public sealed record SampleRequest
{
    public required string ModelPath { get; init; }
    public string? SchedulerConfigPath { get; init; }
    /// <summary>Override of the scheduler class: ddpm | ddim | dpm++2m (betas still come from the config).</summary>
    public string? SchedulerName { get; init; }
    public int Steps { get; init; } = 25;
    public double Eta { get; init; }
    public string? NoisePath { get; init; }
    public string NoiseKey { get; init; } = "noise";
    public long Seed { get; init; }
    public int Count { get; init; } = 16;
    public int[]? Labels { get; init; }
    public double GuidanceScale { get; init; } = 1.0;
    /// <summary>The text to draw, for a Stable Diffusion pipeline folder (which needs one); refused for every other model.</summary>
    public string? Prompt { get; init; }
    /// <summary>What to steer away from under classifier-free guidance (Stable Diffusion only); null or empty means "", as in diffusers.</summary>
    public string? NegativePrompt { get; init; }
    public required string OutputPath { get; init; }
    /// <summary>torch (a diffusers folder) | onnx (an exported bundle: model.onnx + onnx_model.json).</summary>
    public string Backend { get; init; } = "torch";
    /// <summary>ONNX Runtime execution provider for the onnx backend: auto | cpu | directml | cuda.</summary>
    public string Provider { get; init; } = "auto";
}

/// <summary>Runs a sampling request and writes the trajectory (safetensors) or an image grid (PNG).</summary>
public static class SampleRunner
{
    /// <param name="device">The torch device (the onnx backend keeps its tensors on the CPU).</param>
    /// <param name="report">Receives the onnx backend's provider lines (fallbacks, then the provider that runs).</param>
    public static SampleResult Run(SampleRequest request, Device device, Action<int, int>? progress = null, Action<string>? report = null)
    {
        using var model = InferenceModel.Load(request.ModelPath, request.Backend, device, request.Provider, report);
        return Run(request, model, progress);
    }

    /// <summary>
    /// Samples with a model already loaded (a pipeline's hand-off) and writes <see cref="SampleRequest.OutputPath"/>
    /// whole (beside it, then renamed). <paramref name="progress"/> is called after each step; cancelling stops before the next.
    /// </summary>
    public static SampleResult Run(SampleRequest request, InferenceModel model, Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        RefusePrompt(request);
        var device = model.Device;
        string schedulerPath = request.SchedulerConfigPath ?? model.FindSchedulerConfig()
            ?? throw new FileNotFoundException($"'{request.ModelPath}' has no scheduler_config.json beside it; pass --scheduler-config FILE.");
        using var scheduler = Scheduler.FromFile(schedulerPath, request.SchedulerName, request.Eta);

        bool png = request.OutputPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase);
        if (png && model.InChannels is not (1 or 3))
            throw new ArgumentException($"{model.ClassName} samples have {model.InChannels} channels (latents), which cannot be shown as an image; write a .safetensors output instead.");
        var noise = LoadOrDrawNoise(request, model, device);
        Tensor? labels = null;
        if (model.NumClasses is int classes)
        {
            labels = request.Labels is { Length: > 0 } given
                ? tensor(Enumerable.Range(0, (int)noise.shape[0]).Select(i => (long)given[i % given.Length]).ToArray(), device: device)
                : DiffusionSampler.CyclicLabels((int)noise.shape[0], classes, device);
            long max = labels.max().item<long>();
            if (labels.min().item<long>() < 0 || max > (model.NullClass ?? classes - 1))
                throw new ArgumentException($"Labels must be between 0 and {classes - 1} (or {model.NullClass} for the null class).");
        }
        else if (request.Labels is { Length: > 0 })
        {
            throw new ArgumentException($"{model.ClassName} at '{request.ModelPath}' is not class-conditional; drop --labels.");
        }

        var generator = new Generator((ulong)request.Seed + 0x5EED, device);
        var result = model.Sample(scheduler, noise, labels,
            new SampleOptions(request.Steps, request.GuidanceScale, KeepTrajectory: !png), generator, (done, total) =>
            {
                progress?.Invoke(done, total);
                if (done < total) cancel.ThrowIfCancellationRequested();
            });
        cancel.ThrowIfCancellationRequested();
        if (png)
            Runtime.AtomicFile.Replace(request.OutputPath, path => ImageGrid.Save(path, result.Final, scale: 2));
        else
            Runtime.AtomicFile.Replace(request.OutputPath, path => SafetensorsWriter.Write(path, new Dictionary<string, Tensor>
            {
                ["trajectory"] = result.Trajectory!.cpu(),
                ["final"] = result.Final.cpu(),
                ["timesteps"] = tensor(result.Timesteps),
            }));
        return result;
    }

    /// <summary>
    /// Refuses a prompt for a model that is not text-conditioned, rather than sampling it unconditioned. Stable Diffusion
    /// pipeline folders go to <see cref="Pipeline.StableDiffusion.StableDiffusionSampleRunner"/> instead.
    /// </summary>
    public static void RefusePrompt(SampleRequest request)
    {
        if (request.Prompt is not null || request.NegativePrompt is not null)
            throw new ArgumentException($"'{request.ModelPath}' is not a Stable Diffusion pipeline folder (model_index.json naming StableDiffusionPipeline), " +
                "so it cannot follow a text prompt: its models are unconditional or class-conditional (--labels). Drop --prompt / --negative-prompt.");
    }

    private static Tensor LoadOrDrawNoise(SampleRequest request, InferenceModel model, Device device)
    {
        if (request.NoisePath is not null)
        {
            using var file = SafetensorsFile.Open(request.NoisePath);
            if (!file.Contains(request.NoiseKey))
                throw new ArgumentException($"'{request.NoisePath}' has no tensor '{request.NoiseKey}' (it has: {string.Join(", ", file.Entries.Keys)}). Use --noise-key.");
            var noise = file.ReadFloat(request.NoiseKey);
            if (noise.dim() != 4 || noise.shape[1] != model.InChannels)
                throw new ArgumentException($"Noise '{request.NoiseKey}' has shape [{string.Join(", ", noise.shape)}]; the model needs [B, {model.InChannels}, H, W].");
            return noise.to(device);
        }
        if (request.Count < 1) throw new ArgumentException("--count must be at least 1.");
        var generator = new Generator((ulong)request.Seed, CPU);
        // Drawn on the CPU so the same seed gives the same noise on every device.
        return randn([request.Count, model.InChannels, model.SampleSize[0], model.SampleSize[1]], generator: generator).to(device);
    }
}
