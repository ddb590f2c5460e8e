// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL, Google.Protobuf and OnnxSharp here.
using Google.Protobuf;
using Onnx;

namespace DiffusionPrune.Inference.Onnx;

/// <summary>
/// A bundle is untrusted input: before ONNX Runtime opens <c>model.onnx</c>, its graph is read and refused when it is
/// larger than protobuf allows, when its initializers add up to more than a cap, or when an initializer's external data
/// lies outside the bundle folder (an absolute path, <c>..</c>, or a symbolic link anywhere on the way): ONNX Runtime
/// would otherwise read whatever file such a graph names.
/// </summary>
public static class OnnxGraphSafety
{
    /// <summary>protobuf's own limit for one message: a larger model.onnx cannot be a valid graph file.</summary>
    public const long MaxGraphBytes = int.MaxValue;

    /// <summary>Default cap on all initializers, inline and external: far above any model this project prunes.</summary>
    public const long DefaultMaxInitializerBytes = 16L << 30;

    /// <summary>Throws a one-line <see cref="InvalidDataException"/> when the graph at <paramref name="modelPath"/> may not be run.</summary>
    public static void Check(string modelPath, long maxInitializerBytes = DefaultMaxInitializerBytes)
    {
        var file = new FileInfo(modelPath);
        if (!file.Exists) throw new FileNotFoundException($"No ONNX graph at '{modelPath}'.", modelPath);
        if (file.Length > MaxGraphBytes)
            throw new InvalidDataException($"'{modelPath}' is {file.Length:N0} bytes, more than an ONNX graph file can be ({MaxGraphBytes:N0}).");
        ModelProto model;
        try
        {
            using var stream = file.OpenRead();
            model = ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new InvalidDataException($"'{modelPath}' is not an ONNX model ({Formats.Messages.OneLine(e.Message)}); export the model again.", e);
        }
        string folder = Path.GetFullPath(file.DirectoryName!);
        long total = 0;
        foreach (var tensor in Initializers(model.Graph))
        {
            long bytes = tensor.DataLocation == TensorProto.Types.DataLocation.External
                ? ExternalBytes(tensor, folder, modelPath)
                : tensor.RawData.Length + 4L * tensor.FloatData.Count + 8L * (tensor.Int64Data.Count + tensor.DoubleData.Count) + 4L * tensor.Int32Data.Count;
            total += bytes;
            if (total > maxInitializerBytes)
                throw new InvalidDataException($"'{modelPath}' holds more than {maxInitializerBytes:N0} bytes of weights; this runtime refuses graphs that large.");
        }
    }

    /// <summary>The graph's initializers and those of every subgraph (If, Loop, Scan bodies).</summary>
    private static IEnumerable<TensorProto> Initializers(GraphProto? graph)
    {
        if (graph is null) yield break;
        foreach (var tensor in graph.Initializer) yield return tensor;
        foreach (var sparse in graph.SparseInitializer)
        {
            if (sparse.Values is { } values) yield return values;
            if (sparse.Indices is { } indices) yield return indices;
        }
        foreach (var node in graph.Node)
            foreach (var attribute in node.Attribute)
            {
                foreach (var tensor in Initializers(attribute.G)) yield return tensor;
                foreach (var sub in attribute.Graphs)
                    foreach (var tensor in Initializers(sub)) yield return tensor;
                if (attribute.T is { } t) yield return t;
                foreach (var t2 in attribute.Tensors) yield return t2;
            }
    }

    private static long ExternalBytes(TensorProto tensor, string folder, string modelPath)
    {
        string? location = tensor.ExternalData.FirstOrDefault(kv => kv.Key == "location")?.Value;
        if (string.IsNullOrEmpty(location))
            throw new InvalidDataException($"'{modelPath}': initializer '{tensor.Name}' has external data without a location.");
        string where = $"'{modelPath}': initializer '{tensor.Name}' reads external data from '{location}'";
        if (Path.IsPathRooted(location) || location.Contains(':') || location.Replace('\\', '/').Split('/').Contains(".."))
            throw new InvalidDataException($"{where}, outside the bundle folder; a bundle's data must be inside it.");
        string full = Path.GetFullPath(Path.Combine(folder, location));
        if (!full.StartsWith(folder + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new InvalidDataException($"{where}, outside the bundle folder; a bundle's data must be inside it.");
        // No symbolic link on the way: a link inside the folder can point anywhere.
        for (string? step = full; step is not null && step.Length > folder.Length; step = Path.GetDirectoryName(step))
        {
            FileSystemInfo entry = File.Exists(step) ? new FileInfo(step) : new DirectoryInfo(step);
            if (entry.Exists && entry.LinkTarget is not null)
                throw new InvalidDataException($"{where}, through the symbolic link '{step}'; a bundle's data must be plain files inside it.");
        }
        if (!File.Exists(full)) throw new InvalidDataException($"{where}, which does not exist. The bundle is incomplete; export the model again.");
        string? lengthText = tensor.ExternalData.FirstOrDefault(kv => kv.Key == "length")?.Value;
        long size = new FileInfo(full).Length;
        return long.TryParse(lengthText, out long length) && length >= 0 ? Math.Min(length, size) : size;
    }
}
