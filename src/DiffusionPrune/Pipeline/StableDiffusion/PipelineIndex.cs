using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;

namespace DiffusionPrune.Pipeline.StableDiffusion;

/// <summary>One entry of model_index.json: the library and class that saved a component's subfolder, both null when it is left out.</summary>
public sealed record PipelineComponent(string Name, string? Library, string? ClassName)
{
    /// <summary>diffusers writes [null, null] for a component a pipeline was saved without (a disabled safety checker).</summary>
    public bool IsAbsent => Library is null && ClassName is null;
}

/// <summary>
/// A diffusers pipeline folder's <c>model_index.json</c>, read as diffusers' <c>DiffusionPipeline.from_pretrained</c>
/// reads it: <c>_class_name</c> names the pipeline, every other key holding a two-element array names a component, whose
/// weights and config are in the subfolder of that name. Plain values (<c>requires_safety_checker</c>) and keys starting
/// with an underscore (<c>_diffusers_version</c>) are settings, not components.
/// </summary>
public sealed class PipelineIndex
{
    private PipelineIndex(string folder, string? className, IReadOnlyDictionary<string, PipelineComponent> components)
    {
        Folder = folder;
        ClassName = className;
        Components = components;
    }

    /// <summary>The pipeline folder (the one holding model_index.json).</summary>
    public string Folder { get; }

    /// <summary>The pipeline class, e.g. StableDiffusionPipeline; null when the file does not say.</summary>
    public string? ClassName { get; }

    /// <summary>Every component entry by its key (its subfolder's name).</summary>
    public IReadOnlyDictionary<string, PipelineComponent> Components { get; }

    /// <summary>The path of model_index.json for a pipeline folder (or the file itself), or null when <paramref name="path"/> is not a pipeline folder.</summary>
    public static string? Find(string path)
    {
        if (File.Exists(path) && Path.GetFileName(path) == ModelFolder.PipelineIndex) return Path.GetFullPath(path);
        string candidate = Path.Combine(path, ModelFolder.PipelineIndex);
        return Directory.Exists(path) && File.Exists(candidate) ? Path.GetFullPath(candidate) : null;
    }

    /// <summary>Reads a pipeline folder's model_index.json (or the file itself); refuses a folder without one and a malformed file.</summary>
    public static PipelineIndex Load(string path)
    {
        string file = Find(path) ?? throw (Directory.Exists(path)
            ? new ModelFormatException($"'{path}' has no {ModelFolder.PipelineIndex}; it is not a diffusers pipeline folder.")
            : new DirectoryNotFoundException($"No pipeline folder at '{path}'. Give a diffusers pipeline folder (the one holding {ModelFolder.PipelineIndex})."));
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(File.ReadAllText(file), documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{file} is not valid JSON: {Messages.OneLine(e.Message)}");
        }
        if (node is not JsonObject root)
            throw new ModelFormatException($"{file} must hold a JSON object.");

        string? className = null;
        if (root["_class_name"] is { } classNode)
            className = classNode is JsonValue v && v.TryGetValue<string>(out var s) ? s
                : throw new ModelFormatException($"{file}: \"_class_name\" must be a string, not {classNode.ToJsonString()}.");

        var components = new Dictionary<string, PipelineComponent>(StringComparer.Ordinal);
        foreach (var (key, value) in root)
        {
            if (key.StartsWith('_') || value is not JsonArray entry) continue;
            if (entry.Count != 2)
                throw new ModelFormatException($"{file}: component \"{key}\" must be [library, class], not {entry.ToJsonString()}.");
            components[key] = new PipelineComponent(key, Text(entry[0], key, file), Text(entry[1], key, file));
        }
        return new PipelineIndex(Path.GetDirectoryName(file)!, className, components);
    }

    /// <summary>The entry for <paramref name="name"/>, or null when the index has none or lists it as [null, null].</summary>
    public PipelineComponent? Present(string name) =>
        Components.TryGetValue(name, out var component) && !component.IsAbsent ? component : null;

    private static string? Text(JsonNode? node, string key, string file) => node switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        _ => throw new ModelFormatException($"{file}: component \"{key}\" must hold strings or nulls, not {node.ToJsonString()}."),
    };
}
