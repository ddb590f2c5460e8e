// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL and Microsoft.ML.OnnxRuntime here.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Formats;

namespace DiffusionPrune.Inference.Onnx;

/// <summary>
/// The names of an exported bundle: its files and the graph's inputs and output. The one definition shared by the
/// exporter (Export/OnnxExporter.cs, Export/ModelExporter.cs), which writes them, and everything that runs a bundle
/// (this folder, <c>dprune sample/eval --backend onnx</c>, samples/OnDeviceDemo), which reads them.
/// </summary>
public static class OnnxBundle
{

    /// <summary>float32 [batch, in_channels, H, W].</summary>
    public const string SampleInput = "sample";
    /// <summary>int64 [batch], one diffusion timestep per sample.</summary>
    public const string TimestepInput = "timestep";
    /// <summary>int64 [batch], class-conditional models only (float32 [batch, D] for a U-Net with an identity class embedding).</summary>
    public const string ClassLabelsInput = "class_labels";
    /// <summary>float32 [batch, out_channels, H, W]: the prediction is its first in_channels channels.</summary>
    public const string Output = "out_sample";
    /// <summary>The symbolic name of the dynamic batch dimension.</summary>
    public const string BatchDim = "batch";

    /// <summary>True when <paramref name="folder"/> has both model.onnx and onnx_model.json.</summary>
    public static bool IsBundle(string folder) =>
        File.Exists(Path.Combine(folder, ModelFolder.OnnxModel)) && File.Exists(Path.Combine(folder, ModelFolder.OnnxInfo));

    /// <summary>Throws a user-facing error unless <paramref name="folder"/> is an exported bundle.</summary>
    public static void Require(string folder)
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"No bundle folder at '{folder}'. Give the folder `dprune export` wrote (model.onnx + {ModelFolder.OnnxInfo}).");
        var missing = new[] { ModelFolder.OnnxModel, ModelFolder.OnnxInfo }.Where(name => !File.Exists(Path.Combine(folder, name))).ToArray();
        if (missing.Length > 0)
            throw new FileNotFoundException(
                $"'{folder}' is not an exported ONNX bundle: it has no {string.Join(" or ", missing)}. " +
                $"The ONNX backend runs the folder `dprune export` writes: export the model first, then pass that folder.");
    }

    /// <summary>The bundle's scheduler_config.json, or null when it has none.</summary>
    public static string? FindSchedulerConfig(string folder)
    {
        string path = Path.Combine(folder, ModelFolder.SchedulerConfig);
        return File.Exists(path) ? path : null;
    }
}

/// <summary>One dimension of a graph input or output: a fixed size, or a symbolic name such as "batch".</summary>
public readonly record struct OnnxDimension(long? Size, string? Name)
{
    public static OnnxDimension Fixed(long size) => new(size, null);
    public static OnnxDimension Dynamic(string name) => new(null, name);
    public override string ToString() => Size?.ToString(CultureInfo.InvariantCulture) ?? Name ?? "?";
}

/// <summary>A graph input or output as onnx_model.json lists it: <c>{"name": ..., "dtype": "float32", "shape": ["batch", 1, 32, 32]}</c>.</summary>
public sealed record OnnxTensorInfo(string Name, string DType, IReadOnlyList<OnnxDimension> Shape)
{
    public const string Float32 = "float32";
    public const string Int64 = "int64";
}

/// <summary>
/// <c>onnx_model.json</c>, beside <c>model.onnx</c> in a bundle: what a runtime needs to know about the graph without
/// TorchSharp or the diffusers config. <c>dprune export</c> writes it with <see cref="ToJson"/>; the runtimes read it
/// with <see cref="Parse"/> — one format, one set of key names (this file). Every key is written; null where it does
/// not apply:
/// <code>
/// {
///   "file": "model.onnx",
///   "opset": 17,
///   "ir_version": 8,
///   "class_name": "DiTTransformer2DModel",
///   "inputs": [ {"name": "sample", "dtype": "float32", "shape": ["batch", 4, 16, 16]},
///               {"name": "timestep", "dtype": "int64", "shape": ["batch"]},
///               {"name": "class_labels", "dtype": "int64", "shape": ["batch"]} ],    (class-conditional models only)
///   "outputs": [ {"name": "out_sample", "dtype": "float32", "shape": ["batch", 8, 16, 16]} ],
///   "sample_size": [16, 16],     [height, width]
///   "in_channels": 4,
///   "out_channels": 8,           in_channels, or 2 x in_channels with a learned sigma
///   "learned_sigma": true,       the prediction is the first in_channels channels of out_sample
///   "num_classes": 10,           null for an unconditional model
///   "null_class": 10,            the "no class" label of classifier-free guidance; null when the model has none
///   "parameters": 1234,
///   "macs": 5678,                per image
///   "pruned": false
/// }
/// </code>
/// Reading requires inputs, outputs, sample_size, in_channels, out_channels and learned_sigma; the rest default
/// (file model.onnx, no classes, zero cost).
/// </summary>
public sealed record OnnxModelInfo
{
    /// <summary>onnx_model.json (<see cref="ModelFolder.OnnxInfo"/>).</summary>

    // The key names, for the writer and the reader alike.
    private const string FileKey = "file", OpsetKey = "opset", IrVersionKey = "ir_version", ClassNameKey = "class_name",
        InputsKey = "inputs", OutputsKey = "outputs", SampleSizeKey = "sample_size", InChannelsKey = "in_channels",
        OutChannelsKey = "out_channels", LearnedSigmaKey = "learned_sigma", NumClassesKey = "num_classes", NullClassKey = "null_class",
        ParametersKey = "parameters", MacsKey = "macs", PrunedKey = "pruned", NameKey = "name", DTypeKey = "dtype", ShapeKey = "shape";

    /// <summary>The graph file beside onnx_model.json.</summary>
    public string File { get; init; } = ModelFolder.OnnxModel;
    public int Opset { get; init; }
    public long IrVersion { get; init; }
    /// <summary>The diffusers class that was exported (UNet2DModel, DiTTransformer2DModel), when known.</summary>
    public string? ClassName { get; init; }
    public required IReadOnlyList<OnnxTensorInfo> Inputs { get; init; }
    public required IReadOnlyList<OnnxTensorInfo> Outputs { get; init; }
    /// <summary>[height, width] of the samples the model was built for.</summary>
    public required int[] SampleSize { get; init; }
    /// <summary>Channels of <c>sample</c>; the prediction is the first InChannels channels of <c>out_sample</c>.</summary>
    public required int InChannels { get; init; }
    /// <summary>Channels of <c>out_sample</c> (2 x InChannels for learned-sigma models).</summary>
    public required int OutChannels { get; init; }
    public required bool LearnedSigma { get; init; }
    /// <summary>Real classes of a class-conditional model (it then has a <c>class_labels</c> input); null otherwise.</summary>
    public int? NumClasses { get; init; }
    /// <summary>The "no class" label used for classifier-free guidance, when the model has one.</summary>
    public int? NullClass { get; init; }
    public long Parameters { get; init; }
    /// <summary>Multiply-accumulates per image.</summary>
    public long Macs { get; init; }
    public bool Pruned { get; init; }

    /// <summary>The input names, in the graph's order.</summary>
    public IEnumerable<string> InputNames => Inputs.Select(i => i.Name);

    public static OnnxModelInfo Load(string path)
    {
        if (!System.IO.File.Exists(path))
            throw new FileNotFoundException($"No {ModelFolder.OnnxInfo} at '{path}'. An exported bundle has model.onnx and {ModelFolder.OnnxInfo} side by side; run `dprune export` to make one.", path);
        return Parse(System.IO.File.ReadAllText(path), path);
    }

    /// <summary>The JSON <c>dprune export</c> writes (the format above).</summary>
    public JsonObject ToJson() => new()
    {
        [FileKey] = File,
        [OpsetKey] = Opset,
        [IrVersionKey] = IrVersion,
        [ClassNameKey] = ClassName,
        [InputsKey] = new JsonArray(Inputs.Select(i => (JsonNode)Describe(i)).ToArray()),
        [OutputsKey] = new JsonArray(Outputs.Select(o => (JsonNode)Describe(o)).ToArray()),
        [SampleSizeKey] = new JsonArray(SampleSize.Select(s => (JsonNode)JsonValue.Create(s)).ToArray()),
        [InChannelsKey] = InChannels,
        [OutChannelsKey] = OutChannels,
        [LearnedSigmaKey] = LearnedSigma,
        [NumClassesKey] = NumClasses,
        [NullClassKey] = NullClass,
        [ParametersKey] = Parameters,
        [MacsKey] = Macs,
        [PrunedKey] = Pruned,
    };

    public string ToJsonString() => ToJson().ToJsonString(Indented);

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private static JsonObject Describe(OnnxTensorInfo tensor) => new()
    {
        [NameKey] = tensor.Name,
        [DTypeKey] = tensor.DType,
        [ShapeKey] = new JsonArray(tensor.Shape.Select(d => d.Size is long size ? JsonValue.Create(size) : (JsonNode?)JsonValue.Create(d.Name)).ToArray()),
    };

    public static OnnxModelInfo Parse(string json, string source = ModelFolder.OnnxInfo)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject
                ?? throw Formats.Messages.InvalidData($"{source} must hold a JSON object.");
        }
        catch (JsonException e)
        {
            throw Formats.Messages.InvalidData($"{source} is not valid JSON ({Formats.Messages.OneLine(e.Message)}). Export the model again with `dprune export`.", e);
        }

        int inChannels = RequiredInt(root, InChannelsKey, source);
        int outChannels = RequiredInt(root, OutChannelsKey, source);
        int[] sampleSize = Required(root, SampleSizeKey, source) switch
        {
            JsonArray array when array.Count == 2 => [ToInt(array[0], SampleSizeKey, source), ToInt(array[1], SampleSizeKey, source)],
            _ => throw Formats.Messages.InvalidData($"{source}: \"{SampleSizeKey}\" must be [height, width]."),
        };
        bool learnedSigma = Read(Required(root, LearnedSigmaKey, source), LearnedSigmaKey, source, n => n.GetValue<bool>());
        if (inChannels < 1 || sampleSize.Any(s => s < 1))
            throw Formats.Messages.InvalidData($"{source}: in_channels {inChannels} and sample_size [{string.Join(", ", sampleSize)}] are not a valid model shape.");
        if (outChannels != (learnedSigma ? 2 * inChannels : inChannels))
            throw Formats.Messages.InvalidData(
                $"{source}: out_channels {outChannels} with in_channels {inChannels} and learned_sigma {(learnedSigma ? "true" : "false")} is not a denoiser's output; " +
                "a scheduler needs in_channels channels, or 2 x in_channels with a learned sigma.");
        int? numClasses = Int(root, NumClassesKey, source);
        int? nullClass = Int(root, NullClassKey, source);
        if (nullClass is not null && numClasses is null)
            throw Formats.Messages.InvalidData($"{source}: null_class {nullClass} without num_classes; an unconditional model has neither.");
        return new OnnxModelInfo
        {
            File = root[FileKey] is JsonNode file ? Read(file, FileKey, source, n => n.GetValue<string>()) : ModelFolder.OnnxModel,
            Opset = Int(root, OpsetKey, source) ?? 0,
            IrVersion = Long(root, IrVersionKey, source) ?? 0,
            ClassName = root[ClassNameKey] is JsonNode name ? Read(name, ClassNameKey, source, n => n.GetValue<string>()) : null,
            Inputs = Tensors(root, InputsKey, source),
            Outputs = Tensors(root, OutputsKey, source),
            SampleSize = sampleSize,
            InChannels = inChannels,
            OutChannels = outChannels,
            LearnedSigma = learnedSigma,
            NumClasses = numClasses,
            NullClass = nullClass,
            Parameters = Long(root, ParametersKey, source) ?? 0,
            Macs = Long(root, MacsKey, source) ?? 0,
            Pruned = root[PrunedKey] is JsonNode pruned && Read(pruned, PrunedKey, source, n => n.GetValue<bool>()),
        };
    }

    /// <summary>A non-empty list of {"name", "dtype", "shape"} objects.</summary>
    private static OnnxTensorInfo[] Tensors(JsonObject root, string key, string source)
    {
        if (Required(root, key, source) is not JsonArray { Count: > 0 } array)
            throw Formats.Messages.InvalidData($"{source}: \"{key}\" must be a non-empty array of {{\"name\", \"dtype\", \"shape\"}} objects.");
        return array.Select(item =>
        {
            if (item is not JsonObject tensor || tensor[NameKey] is null || tensor[DTypeKey] is null || tensor[ShapeKey] is not JsonArray shape)
                throw Formats.Messages.InvalidData($"{source}: each entry of \"{key}\" must be an object with \"name\", \"dtype\" and \"shape\" (got {item?.ToJsonString() ?? "null"}).");
            var dims = shape.Select(d => d switch
            {
                JsonValue v when v.TryGetValue<string>(out var dimName) => OnnxDimension.Dynamic(dimName),
                _ => OnnxDimension.Fixed(Read(d, $"{key}.{ShapeKey}", source, n => checked((long)n.GetValue<double>()))),
            }).ToArray();
            return new OnnxTensorInfo(Read(tensor[NameKey], $"{key}.{NameKey}", source, n => n.GetValue<string>()),
                Read(tensor[DTypeKey], $"{key}.{DTypeKey}", source, n => n.GetValue<string>()), dims);
        }).ToArray();
    }

    private static JsonNode Required(JsonObject root, string key, string source) =>
        root[key] ?? throw Formats.Messages.InvalidData($"{source} has no \"{key}\"; it is not a complete {ModelFolder.OnnxInfo}. Export the model again with `dprune export`.");

    private static int RequiredInt(JsonObject root, string key, string source) => ToInt(Required(root, key, source), key, source);

    private static int? Int(JsonObject root, string key, string source) =>
        root[key] is JsonNode node ? ToInt(node, key, source) : null;

    private static long? Long(JsonObject root, string key, string source) =>
        root[key] is JsonNode node ? Read(node, key, source, n => checked((long)n.GetValue<double>())) : null;

    private static int ToInt(JsonNode? node, string key, string source) =>
        Read(node, key, source, n => checked((int)n.GetValue<double>()));

    private static T Read<T>(JsonNode? node, string key, string source, Func<JsonNode, T> read)
    {
        try
        {
            return read(node ?? throw new InvalidOperationException());
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or OverflowException)
        {
            throw Formats.Messages.InvalidData($"{source}: \"{key}\" has the wrong type or value ({node?.ToJsonString() ?? "null"}).");
        }
    }
}
