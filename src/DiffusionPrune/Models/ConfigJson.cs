// TorchSharp-free: samples/OnDeviceDemo compiles this file (for the CLIP tokenizer and the ONNX pipeline session). Use only the BCL and Formats/Messages.cs here.
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffusionPrune.Models;

/// <summary>
/// Reads a diffusers <c>config.json</c> the way diffusers does: an absent key takes the constructor's
/// default, while an explicit <c>null</c> is passed on as null (so <c>"attention_head_dim": null</c>
/// means one head of full width, not the default of 8).
/// </summary>
public sealed class ConfigJson
{
    private readonly JsonObject _root;
    public string Source { get; }

    public ConfigJson(JsonObject root, string source)
    {
        _root = root;
        Source = source;
    }

    public static ConfigJson Parse(string json, string source = "config.json")
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{source} is not valid JSON: {Formats.Messages.OneLine(e.Message)}");
        }
        if (node is not JsonObject obj)
            throw new ModelFormatException($"{source} must hold a JSON object.");
        return new ConfigJson(obj, source);
    }

    public static ConfigJson Load(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"No config file at '{path}'.", path);
        return Parse(File.ReadAllText(path), path);
    }

    public JsonObject Root => _root;
    public bool Has(string key) => _root.ContainsKey(key);
    public bool IsNull(string key) => _root.ContainsKey(key) && _root[key] is null;
    public string? ClassName => _root["_class_name"] is null ? null : Convert("_class_name", n => n.GetValue<string>());

    private T Convert<T>(string key, Func<JsonNode, T> read)
    {
        try
        {
            return read(_root[key]!);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or JsonException or NullReferenceException)
        {
            throw new ModelFormatException($"{Source}: '{key}' has the wrong type ({_root[key]?.ToJsonString()}).");
        }
    }

    public int Int(string key, int @default) => Has(key) && !IsNull(key) ? Convert(key, n => WholeNumber(key, n)) : @default;

    /// <summary>Absent: default; present null: null.</summary>
    public int? NullableInt(string key, int? @default) => !Has(key) ? @default : IsNull(key) ? null : Convert(key, n => WholeNumber(key, n));

    /// <summary>A whole number in int range (32 or 32.0), never a silent truncation of 0.5, 1e-320 or 1e308.</summary>
    private int WholeNumber(string key, JsonNode? node)
    {
        double value = node!.GetValue<double>();
        if (value != Math.Floor(value) || value < int.MinValue || value > int.MaxValue)
            throw new ModelFormatException($"{Source}: '{key}' must be a whole number (at most {int.MaxValue:N0}), not {node.ToJsonString()}.");
        return (int)value;
    }

    public double Double(string key, double @default) => Has(key) && !IsNull(key) ? Convert(key, n => n.GetValue<double>()) : @default;
    public bool Bool(string key, bool @default) => Has(key) && !IsNull(key) ? Convert(key, n => n.GetValue<bool>()) : @default;
    public string String(string key, string @default) => Has(key) && !IsNull(key) ? Convert(key, n => n.GetValue<string>()) : @default;
    public string? NullableString(string key, string? @default) => !Has(key) ? @default : IsNull(key) ? null : Convert(key, n => n.GetValue<string>());

    public int[] IntArray(string key, int[] @default) => Has(key) && !IsNull(key)
        ? Convert(key, n => n is JsonArray a ? a.Select(x => WholeNumber(key, x)).ToArray() : new[] { WholeNumber(key, n) })
        : @default;

    public string[] StringArray(string key, string[] @default) => Has(key) && !IsNull(key)
        ? Convert(key, n => n.AsArray().Select(x => x!.GetValue<string>()).ToArray())
        : @default;
}

/// <summary>A model folder or config that cannot be used; the message says what is wrong and what to do.</summary>
public sealed class ModelFormatException(string message) : Exception(Formats.Messages.OneLine(message));
