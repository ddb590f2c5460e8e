using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;

namespace DiffusionPrune.Studio.Export;

/// <summary>
/// An exported bundle as the Studio lists it: its name, folder, zip and what its onnx_model.json says; for an ONNX Stable
/// Diffusion pipeline (<see cref="IsPipeline"/>), the class <see cref="OnnxPipelineLayout.ClassName"/> and the parameters
/// of its three graphs.
/// </summary>
public sealed record BundleEntry(string Name, string Folder, string Zip, long ZipBytes, string? ClassName, long? Parameters, long? Macs, DateTime WrittenUtc)
{
    /// <summary>True for an ONNX Stable Diffusion pipeline folder (model_index.json, text_encoder, unet, vae_decoder, tokenizer, scheduler); false for a single-model bundle.</summary>
    public bool IsPipeline { get; init; }
}

/// <summary>
/// The bundles export jobs write under the Studio's output (<c>exports/NAME/</c>, zipped as <c>exports/NAME.zip</c>).
/// A name from a request is used only when it is a plain name of a bundle that is there.
/// </summary>
public sealed partial class BundleFolders(string root)
{
    /// <summary>The folder bundles are written under.</summary>
    public string Root { get; } = Path.GetFullPath(root);

    /// <summary>The zip a bundle folder is downloaded as.</summary>
    public static string ZipOf(string folder) => Path.TrimEndingDirectorySeparator(folder) + ".zip";

    /// <summary>Every bundle with its zip, newest first.</summary>
    public IReadOnlyList<BundleEntry> List() => !Directory.Exists(Root) ? []
        : Directory.EnumerateDirectories(Root).Select(f => Find(Path.GetFileName(f))).OfType<BundleEntry>().OrderByDescending(b => b.WrittenUtc).ToList();

    /// <summary>The files of a bundle a browser may fetch one by one (the on-device page runs model.onnx itself).</summary>
    public static readonly IReadOnlySet<string> ServedFiles = new HashSet<string>(StringComparer.Ordinal)
        { ModelFolder.OnnxModel, ModelFolder.OnnxInfo, ModelFolder.SchedulerConfig, ModelFolder.Config, ModelFolder.ModelCard };

    /// <summary>
    /// The files of an ONNX pipeline bundle a browser may fetch (the on-device page runs its three graphs): each graph with
    /// its config, the scheduler config, model_index.json and the model card. The tokenizer stays on the server
    /// (<c>POST api/exports/NAME/tokenize</c>).
    /// </summary>
    public static readonly IReadOnlySet<string> ServedPipelineFiles = new HashSet<string>(StringComparer.Ordinal)
    {
        ModelFolder.PipelineIndex, ModelFolder.ModelCard,
        $"{OnnxPipelineLayout.TextEncoderFolder}/{ModelFolder.OnnxModel}", $"{OnnxPipelineLayout.TextEncoderFolder}/{ModelFolder.Config}",
        $"{OnnxPipelineLayout.UNetFolder}/{ModelFolder.OnnxModel}", $"{OnnxPipelineLayout.UNetFolder}/{ModelFolder.Config}",
        $"{OnnxPipelineLayout.VaeDecoderFolder}/{ModelFolder.OnnxModel}", $"{OnnxPipelineLayout.VaeDecoderFolder}/{ModelFolder.Config}",
        $"{OnnxPipelineLayout.SchedulerFolder}/{ModelFolder.SchedulerConfig}",
    };

    /// <summary>
    /// The path of one of <see cref="ServedFiles"/> (a single-model bundle) or <see cref="ServedPipelineFiles"/> (a pipeline,
    /// <c>component/file</c> with '/') in the bundle named <paramref name="name"/>, or null.
    /// </summary>
    public string? FileOf(string? name, string? file)
    {
        if (file is null || Find(name) is not { } bundle) return null;
        if (!(bundle.IsPipeline ? ServedPipelineFiles : ServedFiles).Contains(file)) return null;
        string path = Path.Combine([bundle.Folder, .. file.Split('/')]);
        return File.Exists(path) ? path : null;
    }

    /// <summary>The bundle named <paramref name="name"/> whose zip is written, or null.</summary>
    public BundleEntry? Find(string? name)
    {
        if (!Hosting.PlainNames.Is(name)) return null;
        string folder = Path.Combine(Root, name), zip = ZipOf(folder);
        if (!Directory.Exists(folder) || !File.Exists(zip)) return null;
        if (OnnxPipelineLayout.IsOnnxPipeline(folder))
            return new BundleEntry(name, folder, zip, new FileInfo(zip).Length, OnnxPipelineLayout.ClassName, PipelineParameters(folder), null, File.GetLastWriteTimeUtc(zip))
                { IsPipeline = true };
        JsonNode? info = null;
        try
        {
            string infoPath = Path.Combine(folder, ModelFolder.OnnxInfo);
            if (File.Exists(infoPath)) info = JsonNode.Parse(File.ReadAllText(infoPath));
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or IOException or UnauthorizedAccessException)
        {
            info = null; // listed without figures
        }
        var fields = info as JsonObject; // a crafted onnx_model.json may be any JSON value
        long? Long(string key) => fields?[key] is JsonValue v && v.TryGetValue<long>(out var n) ? n : null;
        string? className = fields?["class_name"] is JsonValue c && c.TryGetValue<string>(out var text) ? text : null;
        return new BundleEntry(name, folder, zip, new FileInfo(zip).Length, className, Long("parameters"), Long("macs"), File.GetLastWriteTimeUtc(zip));
    }

    /// <summary>
    /// The weights of a pipeline's text_encoder, unet and vae_decoder graphs: the elements of their weight initializers (<see cref="IsWeight"/>), or null
    /// when a graph is missing or unreadable (the bundle is listed without the figure). Counted once per file version.
    /// </summary>
    private static long? PipelineParameters(string folder)
    {
        long total = 0;
        foreach (var component in new[] { OnnxPipelineLayout.TextEncoderFolder, OnnxPipelineLayout.UNetFolder, OnnxPipelineLayout.VaeDecoderFolder })
        {
            var file = new FileInfo(Path.Combine(folder, component, ModelFolder.OnnxModel));
            if (!file.Exists || file.Length > OnnxGraphSafety.MaxGraphBytes) return null;
            var key = (file.FullName, file.Length, file.LastWriteTimeUtc);
            if (!GraphParameters.TryGetValue(key, out long count))
            {
                try
                {
                    using var stream = file.OpenRead();
                    var graph = Onnx.ModelProto.Parser.ParseFrom(stream).Graph;
                    count = graph?.Initializer.Where(IsWeight).Sum(t => t.Dims.Aggregate(1L, (product, d) => product * d)) ?? 0;
                }
                catch (Exception e) when (e is Google.Protobuf.InvalidProtocolBufferException or IOException or UnauthorizedAccessException)
                {
                    return null;
                }
                GraphParameters[key] = count;
            }
            total += count;
        }
        return total;
    }

    /// <summary>
    /// A floating-point initializer (ONNX's TensorProto.DataType 1, 10, 11, 16: float32, float16, float64, bfloat16) that is
    /// not one of the constants our exporter adds (<c>const/…</c>: causal masks, scalars; int64 ones are shapes and axes).
    /// </summary>
    private static bool IsWeight(Onnx.TensorProto tensor) =>
        tensor.DataType is 1 or 10 or 11 or 16 && !tensor.Name.StartsWith("const/", StringComparison.Ordinal);

    /// <summary>Initializer elements per graph file version: a listing reads each model.onnx once, not on every page view.</summary>
    private static readonly ConcurrentDictionary<(string Path, long Length, DateTime WrittenUtc), long> GraphParameters = new();
}
