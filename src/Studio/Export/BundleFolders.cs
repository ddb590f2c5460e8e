using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DiffusionPrune.Formats;

namespace DiffusionPrune.Studio.Export;

/// <summary>An exported bundle as the Studio lists it: its name, folder, zip and what its onnx_model.json says.</summary>
public sealed record BundleEntry(string Name, string Folder, string Zip, long ZipBytes, string? ClassName, long? Parameters, long? Macs, DateTime WrittenUtc);

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

    /// <summary>The path of one of <see cref="ServedFiles"/> in the bundle named <paramref name="name"/>, or null.</summary>
    public string? FileOf(string? name, string? file) =>
        file is not null && ServedFiles.Contains(file) && Find(name) is { } bundle && File.Exists(Path.Combine(bundle.Folder, file))
            ? Path.Combine(bundle.Folder, file)
            : null;

    /// <summary>The bundle named <paramref name="name"/> whose zip is written, or null.</summary>
    public BundleEntry? Find(string? name)
    {
        if (!Hosting.PlainNames.Is(name)) return null;
        string folder = Path.Combine(Root, name), zip = ZipOf(folder);
        if (!Directory.Exists(folder) || !File.Exists(zip)) return null;
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
}
