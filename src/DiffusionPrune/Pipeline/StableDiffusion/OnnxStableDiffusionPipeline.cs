using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.OnnxGraphs;
using DiffusionPrune.Schedulers;
using DiffusionPrune.TextEncoding;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Tensor = TorchSharp.torch.Tensor;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pipeline.StableDiffusion;

/// <summary>
/// A folder written by <see cref="StableDiffusionOnnxExporter"/> (diffusers' OnnxStableDiffusionPipeline layout), run from
/// prompt to image with ONNX Runtime: the tokenizer in C#, then text_encoder, unet (every guided step) and vae_decoder
/// model.onnx in ONNX Runtime sessions. The loop is <see cref="DiffusionSampler"/>'s and the scheduler the same one the
/// torch pipeline builds from scheduler/, so the two backends differ only in who evaluates the three networks. Its twin
/// is <see cref="StableDiffusionPipeline"/> (same noise, prompt encoding and decoding order).
/// </summary>
public sealed class OnnxStableDiffusionPipeline : IDisposable
{
    private readonly OnnxSession _textEncoder, _unet, _vaeDecoder;

    public string Folder { get; }
    public ClipTokenizer Tokenizer { get; }
    public IDiffusionScheduler Scheduler { get; }
    public UNet2DConditionConfig UnetConfig { get; }
    public AutoencoderKLConfig VaeConfig { get; }

    /// <summary>The execution provider of the U-Net's session (all three ask for the same one).</summary>
    public OnnxExecutionProvider Provider => _unet.Provider;

    public int VaeScaleFactor => 1 << (VaeConfig.BlockOutChannels.Length - 1);
    private int NumUpsamplers => UnetConfig.BlockOutChannels.Length - 1;

    private OnnxStableDiffusionPipeline(string folder, ClipTokenizer tokenizer, IDiffusionScheduler scheduler, UNet2DConditionConfig unetConfig,
        AutoencoderKLConfig vaeConfig, OnnxSession textEncoder, OnnxSession unet, OnnxSession vaeDecoder)
    {
        (Folder, Tokenizer, Scheduler, UnetConfig, VaeConfig) = (folder, tokenizer, scheduler, unetConfig, vaeConfig);
        (_textEncoder, _unet, _vaeDecoder) = (textEncoder, unet, vaeDecoder);
    }

    /// <summary>Whether <paramref name="path"/> is (or holds the model_index.json of) an ONNX Stable Diffusion pipeline.</summary>
    public static bool IsOnnxPipelineFolder(string path)
    {
        string? index = PipelineIndex.Find(path);
        return index is not null && StableDiffusionOnnxExporter.IsOnnxPipeline(Path.GetDirectoryName(index)!);
    }

    /// <summary>
    /// Opens an exported ONNX pipeline folder. The graph folders must hold the config.json the exporter writes beside
    /// model.onnx (the U-Net's sample size and the VAE's scaling factor); folders converted by diffusers' own script lack
    /// them and are refused by name.
    /// </summary>
    /// <param name="provider">auto | cpu | directml | cuda, for all three sessions.</param>
    public static OnnxStableDiffusionPipeline Open(string path, string provider = "auto", string? schedulerName = null, double ddimEta = 0.0,
        string? schedulerConfigPath = null, Action<string>? report = null)
    {
        var index = PipelineIndex.Load(path);
        string folder = index.Folder;
        if (!StableDiffusionOnnxExporter.IsOnnxPipeline(folder))
            throw new ModelFormatException($"'{folder}' is not an ONNX Stable Diffusion pipeline (model_index.json must name {StableDiffusionOnnxExporter.PipelineClassName}); " +
                $"export a pipeline with: dprune export --model PIPELINE --output DIR.");
        string Required(params string[] parts)
        {
            string file = Path.Combine([folder, .. parts]);
            if (!File.Exists(file))
                throw new ModelFormatException($"'{folder}' has no {string.Join('/', parts)}; re-export the pipeline with dprune export (it writes each graph's config.json beside its model.onnx).");
            return file;
        }
        var unetConfig = UNet2DConditionConfig.FromJson(ConfigJson.Load(Required(StableDiffusionOnnxExporter.UNetFolder, ModelFolder.Config)));
        var vaeConfig = AutoencoderKLConfig.FromJson(ConfigJson.Load(Required(StableDiffusionOnnxExporter.VaeDecoderFolder, ModelFolder.Config)));
        var schedulerConfig = SchedulerConfig.Load(schedulerConfigPath ?? Required(StableDiffusionOnnxExporter.SchedulerFolder, ModelFolder.SchedulerConfig));
        // as the torch pipeline: the index's scheduler class is the one diffusers builds; a user's choice goes over both
        string? indexScheduler = index.Present("scheduler")?.ClassName;
        string? schedulerOverride = schedulerName ?? (schedulerConfigPath is null && indexScheduler is not null && schedulerConfig.ClassName != indexScheduler ? indexScheduler : null);
        var tokenizer = ClipTokenizer.Load(Path.Combine(folder, StableDiffusionOnnxExporter.TokenizerFolder));

        var owned = new List<IDisposable>();
        try
        {
            var scheduler = Schedulers.Scheduler.Create(schedulerConfig, schedulerOverride, ddimEta);
            owned.Add(scheduler);
            OnnxSession Session(string name, Action<string>? lines, string[] inputs, string output)
            {
                string file = Required(name, ModelFolder.OnnxModel);
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
                // the interface the exporter writes (diffusers' ONNX pipeline's): anything else would fail mid-run with ONNX Runtime's message
                var declared = session.Session.InputMetadata;
                if (!inputs.All(declared.ContainsKey) || declared.Count != inputs.Length || !session.Session.OutputNames.Contains(output))
                    throw new ModelFormatException($"'{file}' takes {string.Join(", ", declared.Keys)} and gives {string.Join(", ", session.Session.OutputNames)}; " +
                        $"an ONNX pipeline's {name} takes {string.Join(", ", inputs)} and gives {output}. Re-export the pipeline with dprune export.");
                return session;
            }
            var textEncoder = Session(StableDiffusionOnnxExporter.TextEncoderFolder, null, [CLIPTextOnnx.InputIds], CLIPTextOnnx.LastHiddenState);
            var unet = Session(StableDiffusionOnnxExporter.UNetFolder, report,
                [OnnxBundle.SampleInput, OnnxBundle.TimestepInput, UNet2DConditionOnnx.EncoderHiddenStatesInput], OnnxBundle.Output);
            if (unet.Session.InputMetadata[OnnxBundle.TimestepInput].ElementDataType != TensorElementType.Float)
                throw new ModelFormatException($"'{folder}': unet/model.onnx takes {unet.Session.InputMetadata[OnnxBundle.TimestepInput].ElementDataType} timesteps; " +
                    "this pipeline feeds float32 ones (fractional for Euler schedulers). Re-export the pipeline with dprune export.");
            var vaeDecoder = Session(StableDiffusionOnnxExporter.VaeDecoderFolder, null, [AutoencoderKLOnnx.LatentInput], AutoencoderKLOnnx.SampleOutput);
            return new OnnxStableDiffusionPipeline(folder, tokenizer, scheduler, unetConfig, vaeConfig, textEncoder, unet, vaeDecoder);
        }
        catch
        {
            foreach (var d in owned) d.Dispose();
            throw;
        }
    }

    /// <summary>text_encoder/model.onnx on the tokenizer's ids (padded to model_max_length, int32 as the graph declares): [N, length, hidden_size].</summary>
    public Tensor EncodeText(IReadOnlyList<string> texts)
    {
        int length = Tokenizer.ModelMaxLength;
        var ids = new long[texts.Count * length];
        for (int i = 0; i < texts.Count; i++)
            Tokenizer.EncodeForModel(texts[i] ?? throw new ArgumentException("A prompt is null.", nameof(texts)), length).InputIds.CopyTo(ids, i * length);
        bool int32 = _textEncoder.Session.InputMetadata[CLIPTextOnnx.InputIds].ElementDataType == TensorElementType.Int32;
        using var input = int32
            ? OrtValue.CreateTensorValueFromMemory(ids.Select(x => (int)x).ToArray(), [texts.Count, length])
            : OrtValue.CreateTensorValueFromMemory(ids, [texts.Count, length]);
        return Run(_textEncoder, [CLIPTextOnnx.InputIds], [input], CLIPTextOnnx.LastHiddenState);
    }

    /// <summary>
    /// <see cref="StableDiffusionPipeline.EncodePrompt(IReadOnlyList{string}, IReadOnlyList{string}?, int, bool)"/> for one
    /// prompt through ONNX Runtime: its states and (with guidance) the negative prompt's, each repeated per image.
    /// </summary>
    public PromptEmbeddings EncodePrompt(string prompt, string? negativePrompt, int imagesPerPrompt, bool classifierFreeGuidance)
    {
        if (imagesPerPrompt < 1) throw new ArgumentException("The number of images per prompt must be at least 1.", nameof(imagesPerPrompt));
        static Tensor Repeat(Tensor states, int times)
        {
            if (times == 1) return states;
            using (states) return states.repeat_interleave(times, 0);
        }
        var positive = Repeat(EncodeText([prompt]), imagesPerPrompt);
        return new PromptEmbeddings(positive, classifierFreeGuidance ? Repeat(EncodeText([negativePrompt ?? ""]), imagesPerPrompt) : null);
    }

    /// <summary>unet/model.onnx: (latents [B, C, h, w], timestep scalar / [1] / [B], text states [B, T, D]) -> noise prediction [B, out, h, w].</summary>
    public Tensor PredictNoise(Tensor sample, Tensor timestep, Tensor encoderHiddenStates)
    {
        using var scope = NewDisposeScope();
        long batch = sample.shape[0];
        var t = timestep.detach().to(ScalarType.Float32, CPU).flatten();
        if (t.shape[0] == 1) t = t.expand(batch);
        using var sampleValue = FloatValue(sample);
        using var timestepValue = FloatValue(t);
        using var textValue = FloatValue(encoderHiddenStates);
        var prediction = Run(_unet, [OnnxBundle.SampleInput, OnnxBundle.TimestepInput, UNet2DConditionOnnx.EncoderHiddenStatesInput],
            [sampleValue, timestepValue, textValue], OnnxBundle.Output);
        return prediction.to(sample.dtype, sample.device).MoveToOuterDisposeScope();
    }

    /// <summary>The torch pipeline's <see cref="StableDiffusionPipeline.Decode"/> with vae_decoder/model.onnx: vae.decode(latents / scaling_factor (+ shift)).</summary>
    public Tensor Decode(Tensor latents)
    {
        using var scope = NewDisposeScope();
        var scaled = latents.to(CPU) / VaeConfig.ScalingFactor;
        if (VaeConfig.ShiftFactor is double shift) scaled = scaled + shift;
        using var value = FloatValue(scaled);
        return Run(_vaeDecoder, [AutoencoderKLOnnx.LatentInput], [value], AutoencoderKLOnnx.SampleOutput).MoveToOuterDisposeScope();
    }

    /// <summary><see cref="StableDiffusionPipeline.DrawNoise"/>: the same noise for the same generator, at the U-Net config's sample size by default.</summary>
    public Tensor DrawNoise(int count, Generator generator)
    {
        if (count < 1) throw new ArgumentException("The number of images must be at least 1.", nameof(count));
        int[] size = UnetConfig.SampleSize ?? throw new ModelFormatException($"'{Folder}': unet/config.json has no sample_size; give the noise (--noise) instead.");
        return randn([count, UnetConfig.InChannels, size[0], size[^1]], generator: generator);
    }

    /// <summary>The torch pipeline's <see cref="StableDiffusionPipeline.Generate(PromptEmbeddings, Tensor, SampleOptions, Generator?, Action{int, int}?)"/> with the networks in ONNX Runtime.</summary>
    public StableDiffusionOutput Generate(PromptEmbeddings embeddings, Tensor noise, SampleOptions options, Generator? generator = null, Action<int, int>? progress = null)
    {
        if (noise.dim() != 4 || noise.shape[1] != UnetConfig.InChannels)
            throw new ArgumentException($"The noise must be latents [batch, {UnetConfig.InChannels}, height, width], not [{string.Join(", ", noise.shape)}].", nameof(noise));
        int multiple = 1 << NumUpsamplers;
        if (noise.shape[2] % multiple != 0 || noise.shape[3] % multiple != 0)
            throw new ArgumentException($"Latent height and width must be multiples of {multiple} for this U-Net, not {noise.shape[2]} x {noise.shape[3]}.", nameof(noise));
        using var noGrad = no_grad();
        var result = DiffusionSampler.Sample(PredictNoise, embeddings, Scheduler, noise, options, generator, progress);
        try
        {
            var image = Decode(result.Final);
            return new StableDiffusionOutput(result.Final, result.Trajectory, result.Timesteps, image, StableDiffusionPipeline.Postprocess(image));
        }
        catch
        {
            result.Final.Dispose();
            result.Trajectory?.Dispose();
            throw;
        }
    }

    private static OrtValue FloatValue(Tensor t) =>
        OrtValue.CreateTensorValueFromMemory(t.detach().to(ScalarType.Float32, CPU).contiguous().data<float>().ToArray(), t.shape);

    private static Tensor Run(OnnxSession session, string[] names, IReadOnlyCollection<OrtValue> inputs, string output)
    {
        using var runOptions = new RunOptions();
        using var outputs = session.Session.Run(runOptions, names, inputs, [output]);
        return tensor(outputs[0].GetTensorDataAsSpan<float>().ToArray(), outputs[0].GetTensorTypeAndShape().Shape);
    }

    public void Dispose()
    {
        _textEncoder.Dispose();
        _unet.Dispose();
        _vaeDecoder.Dispose();
        Scheduler.Dispose();
    }
}
