using DiffusionPrune.OnnxGraphs;
using System.Reflection;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.TextEncoding;
using Google.Protobuf;
using Onnx;
using static TorchSharp.torch;

namespace DiffusionPrune.Export;

/// <summary>
/// The interface of every <c>model.onnx</c> we write: the denoiser's forward pass, nothing more.
/// <list type="bullet">
/// <item><c>sample</c>: float32 [batch, in_channels, H, W]. batch is dynamic (named "batch"); H and W are fixed
/// to the model's sample_size.</item>
/// <item><c>timestep</c>: int64 [batch], one diffusion timestep per sample (repeat a scalar timestep yourself); float32 [batch]
/// for a UNet2DConditionModel, as diffusers' ONNX Stable Diffusion unet takes it (Euler schedulers step at fractional timesteps).</item>
/// <item><c>class_labels</c>: only for class-conditional models (DiT; a UNet2DModel with a class embedding):
/// int64 [batch] (for DiT the null class num_embeds_ada_norm means "unconditional", for classifier-free guidance).
/// The one exception is a UNet2DModel with class_embed_type "identity", which adds a ready-made embedding:
/// there it is float32 [batch, time_embed_dim].</item>
/// <item><c>out_sample</c>: float32 [batch, out_channels, H, W], exactly what <see cref="DiffusionModel.Forward"/>
/// returns in eval mode, learned-sigma channels included: the prediction a scheduler consumes is the first
/// in_channels, as <see cref="DiffusionModel.Predict"/> splits it.</item>
/// </list>
/// Opset 17 of the default (ai.onnx) domain, IR version 8, float32 weights as initializers in the one file.
/// The names are defined once, in the TorchSharp-free <see cref="OnnxBundle"/> that the runtimes read them from;
/// onnx_model.json beside the graph is <see cref="OnnxModelInfo"/>.
/// </summary>
public static class OnnxContract
{
    public const string SampleInput = OnnxBundle.SampleInput;
    public const string TimestepInput = OnnxBundle.TimestepInput;
    public const string ClassLabelsInput = OnnxBundle.ClassLabelsInput;
    public const string Output = OnnxBundle.Output;
    public const string BatchDim = OnnxBundle.BatchDim;
    public const string FileName = ModelFolder.OnnxModel;

    /// <summary>The input names of a model's graph, in order (a text-conditioned U-Net reads the text states third).</summary>
    public static string[] InputNames(DiffusionModel model) => ModelFamilies.ConditioningOf(model).Kind switch
    {
        ConditioningKind.None => [SampleInput, TimestepInput],
        ConditioningKind.TextStates => [SampleInput, TimestepInput, UNet2DConditionOnnx.EncoderHiddenStatesInput],
        _ => [SampleInput, TimestepInput, ClassLabelsInput],
    };

    /// <summary>Whether the graph has a class_labels input (class indices, or class embeddings for class_embed_type "identity").</summary>
    public static bool TakesClassLabels(DiffusionModel model) =>
        ModelFamilies.ConditioningOf(model).Kind is ConditioningKind.ClassLabels or ConditioningKind.ClassEmbedding;
}

/// <summary>
/// Exports a loaded model's denoiser forward pass to ONNX (see <see cref="OnnxContract"/>). The graph is built
/// from the model's live modules, so a pruned model (narrowed ResNet blocks, fewer heads or FFN neurons, removed
/// layers) exports at its real, smaller size. Mask-learning gates must be cleared first: export describes the
/// dense model, never a masked one.
/// </summary>
public static class OnnxExporter
{
    public static ModelProto Export(DiffusionModel model, long maxModelBytes = OnnxGraph.ProtobufLimitBytes) =>
        Build(model.ClassName, model.ConfigToJson().ToJsonString(), maxModelBytes, graph => ModelFamilies.Of(model).BuildOnnx(graph, model),
            () => $"{model.ClassName} denoiser forward exported by DiffusionPrune: inputs {string.Join(", ", OnnxContract.InputNames(model))}; output {OnnxContract.Output}.");

    /// <summary>
    /// A Stable Diffusion VAE's decoder (post_quant_conv included) as diffusers' ONNX pipelines hold it in
    /// <c>vae_decoder/model.onnx</c>: <see cref="AutoencoderKLOnnx"/>.
    /// </summary>
    public static ModelProto ExportVaeDecoder(AutoencoderKL vae, long maxModelBytes = OnnxGraph.ProtobufLimitBytes) =>
        Build(AutoencoderKLConfig.ClassName, vae.Config.ToJson().ToJsonString(), maxModelBytes, graph => AutoencoderKLOnnx.BuildDecoder(graph, vae),
            () => $"AutoencoderKL decoder exported by DiffusionPrune: input {AutoencoderKLOnnx.LatentInput} (latents divided by the scaling factor); output {AutoencoderKLOnnx.SampleOutput}.");

    /// <summary>A CLIP text encoder as diffusers' ONNX pipelines hold it in <c>text_encoder/model.onnx</c>: <see cref="CLIPTextOnnx"/>.</summary>
    public static ModelProto ExportTextEncoder(CLIPTextModel textEncoder, Onnx.TensorProto.Types.DataType idType = Onnx.TensorProto.Types.DataType.Int32,
        long maxModelBytes = OnnxGraph.ProtobufLimitBytes) =>
        Build("CLIPTextModel", System.Text.Json.JsonSerializer.Serialize(textEncoder.Config), maxModelBytes, graph => CLIPTextOnnx.Build(graph, textEncoder, idType),
            () => $"CLIPTextModel exported by DiffusionPrune: input {CLIPTextOnnx.InputIds}; output {CLIPTextOnnx.LastHiddenState}.");

    /// <summary>The graph first, so a model the builder refuses is refused with the builder's reason; then the description.</summary>
    private static ModelProto Build(string className, string configJson, long maxModelBytes, Action<OnnxGraph> build, Func<string> docString)
    {
        var graph = new OnnxGraph(className, maxModelBytes);
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            build(graph);
        }
        var metadata = new Dictionary<string, string>
        {
            ["dprune_class_name"] = className,
            ["dprune_config"] = configJson,
        };
        string version = typeof(OnnxExporter).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0";
        return graph.ToModel(version, docString(), metadata);
    }

    /// <summary>Exports and writes <paramref name="path"/> (normally <see cref="OnnxContract.FileName"/>).</summary>
    public static void Write(DiffusionModel model, string path) => OnnxModelWriter.Write(Export(model), path);
}

/// <summary>Serializes an ONNX model to one protobuf file (no external data).</summary>
public static class OnnxModelWriter
{
    public static void Write(ModelProto model, string path)
    {
        // CalculateSize is an int: past 2 GiB it overflows, which is exactly protobuf's limit.
        long size;
        try
        {
            size = model.CalculateSize();
        }
        catch (OverflowException)
        {
            size = -1;
        }
        if (size < 0)
            throw new OnnxExportException("The ONNX model exceeds protobuf's 2 GB limit for one file; this exporter writes no external data.");
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is not null) Directory.CreateDirectory(folder);
        string temporary = path + ".partial";
        using (var stream = File.Create(temporary))
        using (var output = new CodedOutputStream(stream))
        {
            model.WriteTo(output);
        }
        File.Move(temporary, path, overwrite: true);
    }
}
