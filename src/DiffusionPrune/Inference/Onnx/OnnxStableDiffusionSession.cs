// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL, Microsoft.ML.OnnxRuntime and the
// TorchSharp-free files the demo links (ClipTokenizer, ConfigJson, ModelFolder, Messages, the other Inference/Onnx files) here.
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.TextEncoding;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace DiffusionPrune.Inference.Onnx;

/// <summary>
/// The folder layout of diffusers' <c>OnnxStableDiffusionPipeline</c>, names only: what
/// <c>Pipeline.StableDiffusion.StableDiffusionOnnxExporter</c> writes and both ONNX runners read. Like
/// <see cref="OnnxBundle"/> for a single denoiser, it lives here so code without TorchSharp can read the contract.
/// </summary>
public static class OnnxPipelineLayout
{
    /// <summary>model_index.json's <c>_class_name</c> of an exported pipeline.</summary>
    public const string ClassName = "OnnxStableDiffusionPipeline";
    public const string TextEncoderFolder = "text_encoder", UNetFolder = "unet", VaeDecoderFolder = "vae_decoder", TokenizerFolder = "tokenizer", SchedulerFolder = "scheduler";

    /// <summary>text_encoder/model.onnx: <c>input_ids</c> int32 (or int64) [batch, sequence] -> <c>last_hidden_state</c> float32 [batch, sequence, hidden].</summary>
    public const string InputIds = "input_ids", LastHiddenState = "last_hidden_state";

    /// <summary>unet/model.onnx takes <see cref="OnnxBundle.SampleInput"/>, <see cref="OnnxBundle.TimestepInput"/> (float32 [batch]) and this, and gives <see cref="OnnxBundle.Output"/>.</summary>
    public const string EncoderHiddenStates = "encoder_hidden_states";

    /// <summary>vae_decoder/model.onnx: <c>latent_sample</c> (latents / scaling_factor) -> <c>sample</c> in [-1, 1].</summary>
    public const string LatentSample = "latent_sample", DecodedSample = "sample";

    /// <summary>True when <paramref name="folder"/> holds a model_index.json naming <see cref="ClassName"/>.</summary>
    public static bool IsOnnxPipeline(string folder) => IndexClassName(folder) == ClassName;

    /// <summary>model_index.json's <c>_class_name</c> in <paramref name="folder"/>; null when there is no such file, it is not JSON or it names no class.</summary>
    public static string? IndexClassName(string folder)
    {
        string index = Path.Combine(folder, ModelFolder.PipelineIndex);
        if (!File.Exists(index)) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllText(index))?["_class_name"] is JsonValue v && v.TryGetValue<string>(out var name) ? name : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }
}

/// <summary>What <see cref="OnnxStableDiffusionSession.Generate"/> made: final latents [B, C, h, w], the decoded image [B, 3, H, W] in [-1, 1], the timesteps run.</summary>
public sealed record ArrayStableDiffusionOutput(float[] Latents, int[] LatentShape, float[] Image, int[] ImageShape, long[] Timesteps);

/// <summary>
/// An exported ONNX Stable Diffusion pipeline folder (<see cref="OnnxPipelineLayout"/>) from prompt to image on float
/// arrays, for runtimes without TorchSharp (samples/OnDeviceDemo): the CLIP tokenizer in C#, then text_encoder, unet
/// (every guided step, <see cref="ArrayDiffusionSampler.SampleText"/>) and vae_decoder in ONNX Runtime sessions, with DDIM
/// (<see cref="ArrayDDIMScheduler"/>) as the only scheduler. Its twin is
/// <c>Pipeline/StableDiffusion/OnnxStableDiffusionPipeline.cs</c> (same inputs, dtypes, guidance order and decoding;
/// OnDeviceDemoPipelineTests runs both from the same noise).
/// </summary>
public sealed class OnnxStableDiffusionSession : IDisposable
{
    /// <summary>The scheduler classes this runner steps with.</summary>
    public const string SupportedScheduler = "DDIMScheduler";

    private readonly OnnxSession _textEncoder, _unet, _vaeDecoder;
    private readonly bool _int32Ids;

    public string Folder { get; }
    public ClipTokenizer Tokenizer { get; }
    public ArrayDDIMScheduler Scheduler { get; }

    /// <summary>unet/config.json's in_channels (latent channels).</summary>
    public int LatentChannels { get; }

    /// <summary>unet/config.json's sample_size as [h, w] (latent pixels), or null when it has none.</summary>
    public int[]? SampleSize { get; }

    /// <summary>Latent height and width must be multiples of this (2 ^ the U-Net's upsamplers).</summary>
    public int SizeMultiple { get; }

    /// <summary>vae_decoder/config.json's scaling_factor (SD 1.x: 0.18215) and shift_factor (null for SD 1.x / 2.x).</summary>
    public double ScalingFactor { get; }
    public double? ShiftFactor { get; }

    /// <summary>The execution provider of the U-Net's session (all three ask for the same one).</summary>
    public OnnxExecutionProvider Provider => _unet.Provider;

    private OnnxStableDiffusionSession(string folder, ClipTokenizer tokenizer, ArrayDDIMScheduler scheduler, int latentChannels, int[]? sampleSize,
        int sizeMultiple, double scalingFactor, double? shiftFactor, OnnxSession textEncoder, OnnxSession unet, OnnxSession vaeDecoder)
    {
        (Folder, Tokenizer, Scheduler, LatentChannels, SampleSize, SizeMultiple, ScalingFactor, ShiftFactor) =
            (folder, tokenizer, scheduler, latentChannels, sampleSize, sizeMultiple, scalingFactor, shiftFactor);
        (_textEncoder, _unet, _vaeDecoder) = (textEncoder, unet, vaeDecoder);
        _int32Ids = textEncoder.Session.InputMetadata[OnnxPipelineLayout.InputIds].ElementDataType == TensorElementType.Int32;
    }

    /// <summary>
    /// Opens an exported ONNX pipeline folder (the one holding model_index.json). The scheduler is the class model_index.json
    /// names (else scheduler_config.json's), as diffusers builds it; only DDIM runs here, and any other class is refused
    /// unless <paramref name="scheduler"/> is "ddim", which runs DDIM on that config's noise schedule (diffusers'
    /// <c>DDIMScheduler.from_config</c>). Every graph is checked by <see cref="OnnxGraphSafety"/> before ONNX Runtime opens it.
    /// </summary>
    /// <param name="provider">auto | cpu | directml | cuda, for all three sessions.</param>
    /// <param name="scheduler">null (the folder's) or "ddim".</param>
    /// <param name="report">Receives the U-Net session's provider lines.</param>
    public static OnnxStableDiffusionSession Open(string folder, string provider = "auto", string? scheduler = null, Action<string>? report = null)
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"No pipeline folder at '{folder}'. Give the folder `dprune export --model PIPELINE` wrote.");
        string? className = OnnxPipelineLayout.IndexClassName(folder);
        if (className != OnnxPipelineLayout.ClassName)
            throw new ModelFormatException($"'{folder}' is not an ONNX Stable Diffusion pipeline (its {ModelFolder.PipelineIndex} must name {OnnxPipelineLayout.ClassName}, " +
                $"not {className ?? "nothing"}); export a pipeline with: dprune export --model PIPELINE --output DIR.");
        string Required(params string[] parts)
        {
            string file = Path.Combine([folder, .. parts]);
            if (!File.Exists(file))
                throw new ModelFormatException($"'{folder}' has no {string.Join('/', parts)}; re-export the pipeline with dprune export (it writes each graph's config.json beside its model.onnx).");
            return file;
        }

        // 1. configs: the U-Net's latent size and channels, the VAE's scaling, the scheduler
        var unetConfig = ConfigJson.Load(Required(OnnxPipelineLayout.UNetFolder, ModelFolder.Config));
        var vaeConfig = ConfigJson.Load(Required(OnnxPipelineLayout.VaeDecoderFolder, ModelFolder.Config));
        int latentChannels = unetConfig.Int("in_channels", 4);
        int[]? sampleSize = unetConfig.Has("sample_size") && !unetConfig.IsNull("sample_size") ? unetConfig.IntArray("sample_size", [64]) : null;
        if (sampleSize is { Length: 1 }) sampleSize = [sampleSize[0], sampleSize[0]];
        if (sampleSize is not null && (sampleSize.Length != 2 || sampleSize.Any(s => s < 1)))
            throw new ModelFormatException($"{unetConfig.Source}: sample_size must be one positive size or [height, width].");
        int sizeMultiple = 1 << (unetConfig.IntArray("block_out_channels", [320, 640, 1280, 1280]).Length - 1);
        double scalingFactor = vaeConfig.Double("scaling_factor", 0.18215);
        double? shiftFactor = vaeConfig.Has("shift_factor") && !vaeConfig.IsNull("shift_factor") ? vaeConfig.Double("shift_factor", 0) : null;
        if (!(scalingFactor > 0) || double.IsInfinity(scalingFactor))
            throw new ModelFormatException($"{vaeConfig.Source}: scaling_factor must be a positive number, not {scalingFactor}.");
        if (shiftFactor is double shift && !double.IsFinite(shift))
            throw new ModelFormatException($"{vaeConfig.Source}: shift_factor must be a finite number or null, not {shift}.");
        var ddim = OpenScheduler(folder, Required(OnnxPipelineLayout.SchedulerFolder, ModelFolder.SchedulerConfig), scheduler);
        var tokenizer = ClipTokenizer.Load(Path.Combine(folder, OnnxPipelineLayout.TokenizerFolder));

        // 2. the three graphs, each with the interface the exporter writes (anything else would fail mid-run with ONNX Runtime's message)
        var owned = new List<IDisposable>();
        try
        {
            OnnxSession Session(string name, Action<string>? lines, string[] inputs, string output)
            {
                string file = Required(name, ModelFolder.OnnxModel);
                OnnxGraphSafety.Check(file); // an untrusted folder: no data from outside it, no giant graphs
                OnnxSession session;
                try
                {
                    session = OnnxSessionFactory.Open(file, provider, lines);
                }
                catch (OnnxRuntimeException e)
                {
                    throw new ModelFormatException($"'{file}' is not an ONNX model ONNX Runtime can load ({e.Message.Trim()}); re-export the pipeline with dprune export.");
                }
                owned.Add(session);
                var declared = session.Session.InputMetadata;
                if (!inputs.All(declared.ContainsKey) || declared.Count != inputs.Length || !session.Session.OutputNames.Contains(output))
                    throw new ModelFormatException($"'{file}' takes {string.Join(", ", declared.Keys)} and gives {string.Join(", ", session.Session.OutputNames)}; " +
                        $"an ONNX pipeline's {name} takes {string.Join(", ", inputs)} and gives {output}. Re-export the pipeline with dprune export.");
                if (session.Session.OutputMetadata[output].ElementDataType != TensorElementType.Float)
                    throw new ModelFormatException($"'{file}': {output} is {session.Session.OutputMetadata[output].ElementDataType}, not float32. Re-export the pipeline with dprune export.");
                return session;
            }
            var textEncoder = Session(OnnxPipelineLayout.TextEncoderFolder, null, [OnnxPipelineLayout.InputIds], OnnxPipelineLayout.LastHiddenState);
            if (textEncoder.Session.InputMetadata[OnnxPipelineLayout.InputIds].ElementDataType is not (TensorElementType.Int32 or TensorElementType.Int64))
                throw new ModelFormatException($"'{folder}': text_encoder/model.onnx takes {textEncoder.Session.InputMetadata[OnnxPipelineLayout.InputIds].ElementDataType} input_ids, not int32 or int64.");
            var unet = Session(OnnxPipelineLayout.UNetFolder, report, [OnnxBundle.SampleInput, OnnxBundle.TimestepInput, OnnxPipelineLayout.EncoderHiddenStates], OnnxBundle.Output);
            if (unet.Session.InputMetadata[OnnxBundle.TimestepInput].ElementDataType != TensorElementType.Float)
                throw new ModelFormatException($"'{folder}': unet/model.onnx takes {unet.Session.InputMetadata[OnnxBundle.TimestepInput].ElementDataType} timesteps; " +
                    "this runner feeds float32 ones. Re-export the pipeline with dprune export.");
            var vaeDecoder = Session(OnnxPipelineLayout.VaeDecoderFolder, null, [OnnxPipelineLayout.LatentSample], OnnxPipelineLayout.DecodedSample);
            return new OnnxStableDiffusionSession(Path.GetFullPath(folder), tokenizer, ddim, latentChannels, sampleSize, sizeMultiple, scalingFactor, shiftFactor,
                textEncoder, unet, vaeDecoder);
        }
        catch
        {
            foreach (var d in owned) d.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The scheduler diffusers would build (model_index.json's class over the config's own, as the torch pipeline does), if it is
    /// DDIM; with <paramref name="choice"/> "ddim", DDIM on the config's betas and spacing whatever class it names.
    /// </summary>
    private static ArrayDDIMScheduler OpenScheduler(string folder, string configPath, string? choice)
    {
        var config = ArrayDDIMScheduler.ParseConfig(File.ReadAllText(configPath), configPath);
        if (choice is not null)
        {
            if (!string.Equals(choice.Trim(), "ddim", StringComparison.OrdinalIgnoreCase) && !string.Equals(choice.Trim(), SupportedScheduler, StringComparison.OrdinalIgnoreCase))
                throw new NotSupportedException($"Scheduler '{choice}' is not supported here; this runner has DDIM only (--scheduler ddim). " +
                    "dprune sample --backend onnx runs the others (ddpm, pndm, euler, euler-a, dpm++2m).");
            return new ArrayDDIMScheduler(config);
        }
        string? className = IndexSchedulerClass(folder) ?? ConfigJson.Load(configPath).ClassName;
        if (className != SupportedScheduler)
            throw new NotSupportedException($"'{folder}' samples with {className ?? "an unnamed scheduler"}, which this runner does not have; it runs {SupportedScheduler} only. " +
                "Pass --scheduler ddim to run DDIM on this pipeline's noise schedule (its betas and timestep spacing), or sample it with " +
                $"dprune sample --model {folder} --backend onnx --scheduler ddpm|pndm|euler|euler-a|dpm++2m.");
        return new ArrayDDIMScheduler(config);
    }

    /// <summary>model_index.json's "scheduler": [library, class] entry's class, or null.</summary>
    private static string? IndexSchedulerClass(string folder)
    {
        var index = ConfigJson.Load(Path.Combine(folder, ModelFolder.PipelineIndex));
        return index.Root["scheduler"] is JsonArray { Count: 2 } entry && entry[1] is JsonValue v && v.TryGetValue<string>(out var name) ? name : null;
    }

    /// <summary>text_encoder/model.onnx on one text's ids (padded to model_max_length): [1, length, hidden] as a float array and its shape.</summary>
    public (float[] States, int[] Shape) EncodeText(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        int length = Tokenizer.ModelMaxLength;
        long[] ids = Tokenizer.EncodeForModel(text, length).InputIds;
        using var input = _int32Ids
            ? OrtValue.CreateTensorValueFromMemory(ids.Select(x => (int)x).ToArray(), [1, length])
            : OrtValue.CreateTensorValueFromMemory(ids, [1, length]);
        return Run(_textEncoder, [OnnxPipelineLayout.InputIds], [input], OnnxPipelineLayout.LastHiddenState);
    }

    /// <summary>
    /// The prompt's states and (with guidance) the negative prompt's, each [batch, T, D] (one text's states repeated per image),
    /// encoded one text at a time as the twin does.
    /// </summary>
    public (float[] Prompt, float[]? Negative, int[] Shape) EncodePrompt(string prompt, string? negativePrompt, int batch, bool classifierFreeGuidance)
    {
        if (batch < 1) throw new ArgumentException("The number of images must be at least 1.", nameof(batch));
        var (positive, shape) = EncodeText(prompt);
        float[]? negative = classifierFreeGuidance ? EncodeText(negativePrompt ?? "").States : null;
        static float[] Repeat(float[] states, int times)
        {
            var repeated = new float[states.Length * times];
            for (int i = 0; i < times; i++) states.CopyTo(repeated, i * states.Length);
            return repeated;
        }
        return (Repeat(positive, batch), negative is null ? null : Repeat(negative, batch), [batch, shape[1], shape[2]]);
    }

    /// <summary>unet/model.onnx: (latents [B, C, h, w], one timestep for all, text states [B, T, D]) -> noise prediction [B, C, h, w].</summary>
    public float[] PredictNoise(float[] sample, int[] shape, long timestep, float[] states, int[] statesShape)
    {
        int batch = shape[0];
        var timesteps = Enumerable.Repeat((float)timestep, batch).ToArray();
        using var sampleValue = OrtValue.CreateTensorValueFromMemory(sample, shape.Select(d => (long)d).ToArray());
        using var timestepValue = OrtValue.CreateTensorValueFromMemory(timesteps, [batch]);
        using var statesValue = OrtValue.CreateTensorValueFromMemory(states, statesShape.Select(d => (long)d).ToArray());
        var (prediction, predictionShape) = Run(_unet, [OnnxBundle.SampleInput, OnnxBundle.TimestepInput, OnnxPipelineLayout.EncoderHiddenStates],
            [sampleValue, timestepValue, statesValue], OnnxBundle.Output);
        if (!predictionShape.SequenceEqual(shape))
            throw new InvalidDataException($"unet/model.onnx gave [{string.Join(", ", predictionShape)}] for latents [{string.Join(", ", shape)}]; " +
                "a Stable Diffusion U-Net predicts the noise at the latents' shape. Re-export the pipeline with dprune export.");
        return prediction;
    }

    /// <summary>vae_decoder/model.onnx on latents / scaling_factor (+ shift_factor): the image [B, 3, H, W] in [-1, 1] (not clamped).</summary>
    public (float[] Image, int[] Shape) Decode(float[] latents, int[] shape)
    {
        float scaling = (float)ScalingFactor;
        var scaled = new float[latents.Length];
        for (int i = 0; i < latents.Length; i++) scaled[i] = latents[i] / scaling;
        if (ShiftFactor is double shift)
        {
            float s = (float)shift;
            for (int i = 0; i < scaled.Length; i++) scaled[i] += s;
        }
        using var value = OrtValue.CreateTensorValueFromMemory(scaled, shape.Select(d => (long)d).ToArray());
        return Run(_vaeDecoder, [OnnxPipelineLayout.LatentSample], [value], OnnxPipelineLayout.DecodedSample);
    }

    /// <summary>
    /// Prompt to image from <paramref name="noise"/> (initial latents [B, C, h, w]): the prompt (and, for a guidance scale
    /// above 1, the negative prompt) encoded, DDIM for <paramref name="steps"/> steps, then the VAE decoder.
    /// </summary>
    /// <param name="progress">Called after each step with (step, steps).</param>
    public ArrayStableDiffusionOutput Generate(string prompt, string? negativePrompt, float[] noise, int[] noiseShape, int steps, double guidanceScale,
        Action<int, int>? progress = null)
    {
        if (noiseShape.Length != 4 || noiseShape[1] != LatentChannels || noise.Length != (long)noiseShape[0] * noiseShape[1] * noiseShape[2] * noiseShape[3])
            throw new ArgumentException($"The noise must be latents [batch, {LatentChannels}, height, width], not [{string.Join(", ", noiseShape)}] ({noise.Length} values).", nameof(noise));
        if (noiseShape[2] % SizeMultiple != 0 || noiseShape[3] % SizeMultiple != 0)
            throw new ArgumentException($"Latent height and width must be multiples of {SizeMultiple} for this U-Net, not {noiseShape[2]} x {noiseShape[3]}.", nameof(noise));
        if (!double.IsFinite(guidanceScale))
            throw new ArgumentException($"The guidance scale must be a finite number, not {guidanceScale}.", nameof(guidanceScale));
        bool guided = guidanceScale > 1.0;
        var (promptStates, negativeStates, statesShape) = EncodePrompt(prompt, negativePrompt, noiseShape[0], guided);
        var latents = ArrayDiffusionSampler.SampleText(PredictNoise, promptStates, negativeStates, statesShape, Scheduler, noise, noiseShape, steps,
            guidanceScale, progress);
        var (image, imageShape) = Decode(latents, noiseShape);
        return new ArrayStableDiffusionOutput(latents, (int[])noiseShape.Clone(), image, imageShape, Scheduler.Timesteps);
    }

    /// <summary>Images in [-1, 1] to [0, 1] as the pipelines' postprocess: (x / 2 + 0.5).clamp(0, 1).</summary>
    public static float[] Postprocess(float[] image) => image.Select(x => Math.Clamp(x / 2f + 0.5f, 0f, 1f)).ToArray();

    private static (float[] Values, int[] Shape) Run(OnnxSession session, string[] names, IReadOnlyCollection<OrtValue> inputs, string output)
    {
        using var runOptions = new RunOptions();
        using var outputs = session.Session.Run(runOptions, names, inputs, [output]);
        var values = outputs[0].GetTensorDataAsSpan<float>().ToArray();
        var shape = outputs[0].GetTensorTypeAndShape().Shape.Select(d => checked((int)d)).ToArray();
        return (values, shape);
    }

    public void Dispose()
    {
        _textEncoder.Dispose();
        _unet.Dispose();
        _vaeDecoder.Dispose();
    }
}
