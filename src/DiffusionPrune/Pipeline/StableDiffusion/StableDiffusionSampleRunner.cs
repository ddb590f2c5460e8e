using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pipeline.StableDiffusion;

/// <summary>
/// <c>dprune sample</c> on a Stable Diffusion pipeline folder: the twin of <see cref="SampleRunner"/> for text-to-image.
/// The same request, seeds and outputs (a PNG grid, or safetensors with the latents), except that the samples are
/// decoded through the pipeline's VAE and conditioned on <see cref="SampleRequest.Prompt"/>.
/// </summary>
public static class StableDiffusionSampleRunner
{
    /// <summary>diffusers' StableDiffusionPipeline default, used when a request leaves the guidance scale unset.</summary>
    public const double DefaultGuidanceScale = 7.5;

    /// <summary>One image per prompt, diffusers' default num_images_per_prompt.</summary>
    public const int DefaultCount = 1;

    /// <summary>
    /// Refuses, before anything loads, what a text-to-image run cannot honour: no prompt, class labels, or a backend that does
    /// not match the folder (torch runs a diffusers pipeline, onnx an exported ONNX pipeline).
    /// </summary>
    public static void Check(SampleRequest request)
    {
        if (string.IsNullOrWhiteSpace(request.Prompt))
            throw new ArgumentException($"'{request.ModelPath}' is a Stable Diffusion pipeline: give a prompt with --prompt \"...\" " +
                "(and optionally --negative-prompt); text-to-image sampling needs one.");
        if (request.Labels is { Length: > 0 })
            throw new ArgumentException($"'{request.ModelPath}' is a Stable Diffusion pipeline, conditioned on the prompt, not on class labels; drop --labels.");
        string backend = request.Backend?.Trim().ToLowerInvariant() ?? "torch";
        bool onnxFolder = OnnxStableDiffusionPipeline.IsOnnxPipelineFolder(request.ModelPath);
        if (backend == "torch" && onnxFolder)
            throw new ArgumentException($"'{request.ModelPath}' is an ONNX Stable Diffusion pipeline: sample it with --backend onnx.");
        if (backend == "onnx" && !onnxFolder)
            throw new ArgumentException($"The onnx backend runs an exported ONNX pipeline; '{request.ModelPath}' is a diffusers (safetensors) pipeline. " +
                $"Export it first with: dprune export --model {request.ModelPath} --output DIR, then sample DIR with --backend onnx.");
        if (backend is not ("torch" or "onnx"))
            throw new ArgumentException($"--backend '{request.Backend}' is not a backend: use torch or onnx.");
        if (request.Count < 1) throw new ArgumentException("--count must be at least 1.");
    }

    /// <summary>
    /// Loads the pipeline at <see cref="SampleRequest.ModelPath"/>, generates <see cref="SampleRequest.Count"/> images of the
    /// prompt (or one per latent of <see cref="SampleRequest.NoisePath"/>) and writes <see cref="SampleRequest.OutputPath"/>
    /// whole: a PNG grid of the decoded images, or safetensors with <c>trajectory</c> (latents after each step),
    /// <c>final</c> (latents), <c>image</c> (decoded, in [-1, 1]) and <c>timesteps</c>.
    /// </summary>
    /// <param name="note">Receives the pipeline's loading notes (components left out).</param>
    /// <param name="progress">Called after each step; cancelling stops before the next.</param>
    public static StableDiffusionOutput Run(SampleRequest request, Device device, Action<string>? note = null, Action<int, int>? progress = null,
        CancellationToken cancel = default)
    {
        Check(request);
        bool png = request.OutputPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase);
        var options = new SampleOptions(request.Steps, request.GuidanceScale, KeepTrajectory: !png);
        void Progress(int done, int total)
        {
            progress?.Invoke(done, total);
            if (done < total) cancel.ThrowIfCancellationRequested();
        }
        StableDiffusionOutput output;
        if (OnnxStableDiffusionPipeline.IsOnnxPipelineFolder(request.ModelPath))
        {
            // the same noise, prompt encoding and loop as the torch branch below; the three networks run in ONNX Runtime
            using var onnx = OnnxStableDiffusionPipeline.Open(request.ModelPath, request.Provider, request.SchedulerName, request.Eta, request.SchedulerConfigPath, note);
            using var onnxNoise = request.NoisePath is null
                ? onnx.DrawNoise(request.Count, new Generator((ulong)request.Seed, CPU))
                : ReadNoise(request, onnx.UnetConfig.InChannels);
            using var onnxEmbeddings = onnx.EncodePrompt(request.Prompt!, request.NegativePrompt ?? "", (int)onnxNoise.shape[0],
                classifierFreeGuidance: request.GuidanceScale > 1.0);
            output = onnx.Generate(onnxEmbeddings, onnxNoise, options, new Generator((ulong)request.Seed + 0x5EED, CPU), Progress);
        }
        else
        {
            // refused from the configs alone, before any weights are read, when the whole run does not fit
            PipelineResources.Sampling(request.ModelPath, Math.Max(1, request.Count), guided: request.GuidanceScale > 1.0).EnsureFits(request.ModelPath);
            using var pipeline = StableDiffusionPipeline.Load(request.ModelPath, request.SchedulerName, request.Eta, request.SchedulerConfigPath, device);
            foreach (var line in pipeline.Notes) note?.Invoke(line);

            using var noise = request.NoisePath is null
                ? pipeline.DrawNoise(request.Count, new Generator((ulong)request.Seed, CPU))
                : ReadNoise(request, pipeline.Unet.InChannels);
            using var embeddings = pipeline.EncodePrompt(request.Prompt!, request.NegativePrompt ?? "", (int)noise.shape[0],
                classifierFreeGuidance: request.GuidanceScale > 1.0);
            output = pipeline.Generate(embeddings, noise, options, new Generator((ulong)request.Seed + 0x5EED, pipeline.Device), Progress);
        }
        try
        {
            cancel.ThrowIfCancellationRequested();
            if (png)
            {
                // One image is written as it is; several are tiled with grey gaps, as every dprune grid.
                int padding = output.Image.shape[0] == 1 ? 0 : 2;
                Runtime.AtomicFile.Replace(request.OutputPath, path => ImageGrid.Save(path, output.Image, padding: padding));
            }
            else
            {
                Runtime.AtomicFile.Replace(request.OutputPath, path => SafetensorsWriter.Write(path, new Dictionary<string, Tensor>
                {
                    ["trajectory"] = output.Trajectory!.cpu(),
                    ["final"] = output.Latents.cpu(),
                    ["image"] = output.Image.cpu(),
                    ["timesteps"] = tensor(output.Timesteps),
                }));
            }
            return output;
        }
        catch
        {
            output.Dispose();
            throw;
        }
    }

    private static Tensor ReadNoise(SampleRequest request, int channels)
    {
        using var file = SafetensorsFile.Open(request.NoisePath!);
        if (!file.Contains(request.NoiseKey))
            throw new ArgumentException($"'{request.NoisePath}' has no tensor '{request.NoiseKey}' (it has: {string.Join(", ", file.Entries.Keys)}). Use --noise-key.");
        var noise = file.ReadFloat(request.NoiseKey);
        if (noise.dim() != 4 || noise.shape[1] != channels)
        {
            var shape = string.Join(", ", noise.shape);
            noise.Dispose();
            throw new ArgumentException($"Noise '{request.NoiseKey}' has shape [{shape}]; the pipeline's U-Net needs latents [B, {channels}, h, w].");
        }
        return noise;
    }
}
