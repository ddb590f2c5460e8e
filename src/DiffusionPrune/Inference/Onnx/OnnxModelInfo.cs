// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL and Microsoft.ML.OnnxRuntime here.
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffusionPrune.Inference.Onnx;

/// <summary>
/// <c>onnx_model.json</c>, written by <c>dprune export</c> beside <c>model.onnx</c>: what a runtime needs to know about
/// the graph without TorchSharp or the diffusers config.
/// </summary>
/// <param name="InChannels">Channels of <c>sample</c>; the prediction is the first InChannels channels of <c>out_sample</c>.</param>
/// <param name="OutChannels">Channels of <c>out_sample</c> (2 x InChannels for learned-sigma models).</param>
/// <param name="SampleSize">[height, width] of the samples the model was built for.</param>
/// <param name="NumClasses">Real classes of a class-conditional model (it then has a <c>class_labels</c> input); null otherwise.</param>
/// <param name="NullClass">The "no class" label used for classifier-free guidance, when the model has one.</param>
public sealed record OnnxModelInfo(
    int Opset, string[] Inputs, string[] Outputs, int[] SampleSize, int InChannels, int OutChannels, bool LearnedSigma,
    int? NumClasses, int? NullClass, long Parameters, long Macs)
{
    public const string FileName = "onnx_model.json";

    public static OnnxModelInfo Load(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"No {FileName} at '{path}'. An exported bundle has model.onnx and {FileName} side by side; run `dprune export` to make one.", path);
        return Parse(File.ReadAllText(path), path);
    }

    public static OnnxModelInfo Parse(string json, string source = FileName)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject
                ?? throw new InvalidDataException($"{source} must hold a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source} is not valid JSON ({e.Message}). Export the model again with `dprune export`.", e);
        }

        int inChannels = Int(root, "in_channels", source)
            ?? throw new InvalidDataException($"{source} has no \"in_channels\"; it is not a complete onnx_model.json. Export the model again.");
        int[] sampleSize = root["sample_size"] switch
        {
            null => throw new InvalidDataException($"{source} has no \"sample_size\"; it is not a complete onnx_model.json. Export the model again."),
            JsonArray array when array.Count == 2 => [ToInt(array[0], "sample_size", source), ToInt(array[1], "sample_size", source)],
            JsonArray => throw new InvalidDataException($"{source}: \"sample_size\" must be a number or [height, width]."),
            var node => [ToInt(node, "sample_size", source), ToInt(node, "sample_size", source)],
        };
        int outChannels = Int(root, "out_channels", source) ?? inChannels;
        if (inChannels < 1 || outChannels < inChannels || sampleSize.Any(s => s < 1))
            throw new InvalidDataException($"{source}: in_channels {inChannels}, out_channels {outChannels} and sample_size [{string.Join(", ", sampleSize)}] are not a valid model shape.");
        bool learnedSigma = root["learned_sigma"] is JsonNode ls ? Read(ls, "learned_sigma", source, n => n.GetValue<bool>()) : outChannels == 2 * inChannels;
        int? numClasses = Int(root, "num_classes", source);
        int? nullClass = Int(root, "null_class", source);
        return new OnnxModelInfo(
            Int(root, "opset", source) ?? 0, Names(root, "inputs", source), Names(root, "outputs", source), sampleSize, inChannels, outChannels,
            learnedSigma, numClasses, nullClass, Long(root, "parameters", source) ?? 0, Long(root, "macs", source) ?? 0);
    }

    /// <summary>A list of names, or of objects with a "name" (either is accepted: only the names matter here).</summary>
    private static string[] Names(JsonObject root, string key, string source) => root[key] switch
    {
        null => [],
        JsonArray array => array.Select(item => item switch
        {
            JsonValue value => Read(value, key, source, n => n.GetValue<string>()),
            JsonObject obj when obj["name"] is JsonNode name => Read(name, key, source, n => n.GetValue<string>()),
            _ => throw new InvalidDataException($"{source}: \"{key}\" must list names or objects with a \"name\"."),
        }).ToArray(),
        _ => throw new InvalidDataException($"{source}: \"{key}\" must be an array."),
    };

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
            throw new InvalidDataException($"{source}: \"{key}\" has the wrong type or value ({node?.ToJsonString() ?? "null"}).");
        }
    }
}

/// <summary>The files of an exported bundle that the ONNX backends read.</summary>
public static class OnnxBundle
{
    public const string ModelFileName = "model.onnx";
    public const string SchedulerConfigFileName = "scheduler_config.json";

    /// <summary>True when <paramref name="folder"/> has both model.onnx and onnx_model.json.</summary>
    public static bool IsBundle(string folder) =>
        File.Exists(Path.Combine(folder, ModelFileName)) && File.Exists(Path.Combine(folder, OnnxModelInfo.FileName));

    /// <summary>Throws a user-facing error unless <paramref name="folder"/> is an exported bundle.</summary>
    public static void Require(string folder)
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"No bundle folder at '{folder}'. Give the folder `dprune export` wrote (model.onnx + {OnnxModelInfo.FileName}).");
        var missing = new[] { ModelFileName, OnnxModelInfo.FileName }.Where(name => !File.Exists(Path.Combine(folder, name))).ToArray();
        if (missing.Length > 0)
            throw new FileNotFoundException(
                $"'{folder}' is not an exported ONNX bundle: it has no {string.Join(" or ", missing)}. " +
                $"The ONNX backend runs the folder `dprune export` writes: export the model first, then pass that folder.");
    }

    /// <summary>The bundle's scheduler_config.json, or null when it has none.</summary>
    public static string? FindSchedulerConfig(string folder)
    {
        string path = Path.Combine(folder, SchedulerConfigFileName);
        return File.Exists(path) ? path : null;
    }
}
