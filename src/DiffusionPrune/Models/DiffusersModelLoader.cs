using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DiffusionPrune.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>
/// Loads and saves models in Hugging Face diffusers layout: a folder with config.json and
/// diffusion_pytorch_model[.variant].safetensors (or a sharded index), or a pipeline folder with
/// model_index.json whose <c>unet</c> / <c>transformer</c> subfolder holds the denoiser.
/// Loading is strict: every key must match in name and shape, so a model never runs with random weights.
/// Which class a config builds is the family registry's business (<c>ModelFamilies.Load</c>, one room up); this holds the files.
/// </summary>
public static partial class DiffusersModelLoader
{
    private static readonly string[] PickleExtensions = [".bin", ".ckpt", ".pt", ".pth", ".pkl"];

    /// <summary>Finds the folder that holds the denoiser's config.json (itself, or a pipeline's unet/transformer subfolder).</summary>
    public static string ResolveModelFolder(string path)
    {
        if (File.Exists(path) && Path.GetFileName(path) == ModelFolder.Config)
            path = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(path))
            throw new DirectoryNotFoundException($"No model folder at '{path}'. Give a diffusers model folder (config.json + safetensors) or a pipeline folder (model_index.json).");
        if (File.Exists(Path.Combine(path, ModelFolder.Config)))
            return path;
        if (File.Exists(Path.Combine(path, ModelFolder.PipelineIndex)))
        {
            foreach (var sub in new[] { "unet", "transformer" })
                if (File.Exists(Path.Combine(path, sub, ModelFolder.Config)))
                    return Path.Combine(path, sub);
            throw new ModelFormatException($"'{path}' is a pipeline (model_index.json) but has no unet/ or transformer/ subfolder with a config.json.");
        }
        throw new ModelFormatException($"'{path}' has no config.json (nor model_index.json). Give a diffusers model folder.");
    }

    /// <summary>The scheduler config that belongs with a model folder, if any (beside it, or in the pipeline's scheduler/).</summary>
    public static string? FindSchedulerConfig(string modelPath)
    {
        string folder = ResolveModelFolder(modelPath);
        string[] candidates =
        [
            Path.Combine(folder, ModelFolder.SchedulerConfig),
            Path.Combine(folder, "scheduler", ModelFolder.SchedulerConfig),
            Path.Combine(Path.GetDirectoryName(Path.GetFullPath(folder))!, "scheduler", ModelFolder.SchedulerConfig),
            Path.Combine(Path.GetFullPath(modelPath), "scheduler", ModelFolder.SchedulerConfig),
        ];
        return candidates.FirstOrDefault(File.Exists);
    }

    /// <summary>Reads every tensor of the model's weights as float32 (F16/BF16 variants are upcast). To load a model, use
    /// <see cref="OpenWeights"/> and <see cref="LoadStrict(nn.Module, WeightsOnDisk, string)"/>, which hold one tensor at a time.</summary>
    public static Dictionary<string, Tensor> ReadWeights(string folder, string? variant = null)
    {
        using var weights = OpenWeights(folder, variant);
        return weights.Tensors.ToDictionary(kv => kv.Key, kv => kv.Value.ReadFloat(), StringComparer.Ordinal);
    }

    /// <summary>
    /// Opens a model folder's weights (its diffusion_pytorch_model[.variant].safetensors, or the shards its index names)
    /// memory-mapped, reading only the headers: names, dtypes and shapes. Each tensor's bytes are read when it is copied.
    /// </summary>
    public static WeightsOnDisk OpenWeights(string folder, string? variant = null)
    {
        var weights = new WeightsOnDisk();
        try
        {
            foreach (var (file, keys) in WeightFiles(folder, variant))
            {
                var st = weights.Add(SafetensorsFile.Open(file));
                foreach (var key in keys ?? st.Entries.Keys.ToList())
                {
                    if (!st.Contains(key))
                        throw new ModelFormatException($"The shard index says '{key}' is in '{Path.GetFileName(file)}', but that file does not hold it.");
                    if (weights.Tensors.ContainsKey(key))
                        throw new ModelFormatException($"Tensor '{key}' appears in more than one weights file in '{folder}'.");
                    weights.Tensors[key] = new StoredTensor(st, key);
                }
            }
            return weights;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>Reads every tensor of one safetensors file as float32.</summary>
    public static Dictionary<string, Tensor> ReadSafetensors(string path)
    {
        using var st = SafetensorsFile.Open(path);
        return st.Entries.Keys.ToDictionary(k => k, k => st.ReadFloat(k), StringComparer.Ordinal);
    }

    private static List<(string file, List<string>? keys)> WeightFiles(string folder, string? variant)
    {
        string Name(string? v, string ext) => v is null ? $"{ModelFolder.WeightsStem}{ext}" : $"{ModelFolder.WeightsStem}.{v}{ext}";

        var variants = variant is null ? new string?[] { null, "fp16", "bf16" } : [variant];
        foreach (var v in variants)
        {
            string single = Path.Combine(folder, Name(v, ".safetensors"));
            if (File.Exists(single)) return [(single, null)];
            string index = Path.Combine(folder, Name(v, ".safetensors.index.json"));
            if (File.Exists(index)) return ReadShardIndex(folder, index);
        }
        var pickles = Directory.EnumerateFiles(folder).Where(f => PickleExtensions.Contains(Path.GetExtension(f).ToLowerInvariant())).ToList();
        if (pickles.Count > 0)
            throw new ModelFormatException(
                $"'{folder}' holds only pickle weights ({string.Join(", ", pickles.Select(Path.GetFileName))}). Pickle files can run arbitrary code when loaded, " +
                "so they are refused. Convert them to safetensors first (in Python: model = ...from_pretrained(folder); model.save_pretrained(folder, safe_serialization=True)).");
        throw new ModelFormatException($"'{folder}' has no {Name(variant, ".safetensors")} (nor a sharded .safetensors.index.json).");
    }

    private static List<(string, List<string>?)> ReadShardIndex(string folder, string indexPath)
    {
        JsonObject index;
        try
        {
            index = JsonNode.Parse(File.ReadAllText(indexPath))?.AsObject() ?? throw new ModelFormatException($"{indexPath} is empty.");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new ModelFormatException($"{indexPath} is not a valid shard index: {Formats.Messages.OneLine(e.Message)}");
        }
        if (index["weight_map"] is not JsonObject map)
            throw new ModelFormatException($"{indexPath} has no weight_map.");
        var byFile = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        foreach (var (key, value) in map)
        {
            if (value is not JsonValue fileValue || !fileValue.TryGetValue<string>(out var file))
                throw new ModelFormatException($"{indexPath}: weight_map['{key}'] is not a file name.");
            if (file.Contains('/') || file.Contains('\\') || file.Contains(".."))
                throw new ModelFormatException($"{indexPath}: shard name '{file}' must be a plain file name in the same folder.");
            if (!byFile.TryGetValue(file, out var keys)) byFile[file] = keys = [];
            keys.Add(key);
        }
        var result = new List<(string, List<string>?)>();
        foreach (var (file, keys) in byFile)
        {
            string full = Path.Combine(folder, file);
            if (!File.Exists(full))
                throw new ModelFormatException($"{indexPath} names shard '{file}', which is missing from '{folder}'.");
            result.Add((full, keys));
        }
        return result;
    }

    [GeneratedRegex(@"^(.*attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")]
    private static partial Regex LegacyAttentionKey();

    /// <summary>Old UNet2DModel checkpoints name attention projections query/key/value/proj_attn; rename once, here.</summary>
    public static int RenameLegacyAttentionKeys<T>(Dictionary<string, T> weights)
    {
        int renamed = 0;
        foreach (var key in weights.Keys.ToList())
        {
            var match = LegacyAttentionKey().Match(key);
            if (!match.Success) continue;
            string newName = match.Groups[2].Value switch
            {
                "query" => "to_q",
                "key" => "to_k",
                "value" => "to_v",
                _ => "to_out.0",
            };
            string target = $"{match.Groups[1].Value}.{newName}.{match.Groups[3].Value}";
            if (weights.ContainsKey(target))
                throw new ModelFormatException($"The weights hold both '{key}' and '{target}'.");
            weights[target] = weights[key];
            weights.Remove(key);
            renamed++;
        }
        return renamed;
    }

    /// <summary>Copies weights into the model; any missing, unexpected or mis-shaped key is an error naming it.</summary>
    public static void LoadStrict(nn.Module model, IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        var expected = model.state_dict();
        CheckStrict(expected, weights, key => weights[key].shape, source);
        using var noGrad = no_grad();
        foreach (var (key, target) in expected)
            target.copy_(weights[key]);
    }

    /// <summary>
    /// Copies weights from disk into the model one tensor at a time: every name and shape is checked from the headers
    /// before a byte is read, then each tensor is read (upcast to float32 where stored as F16/BF16), copied, freed, and its
    /// mapped pages let go, so loading never holds more than the model plus one tensor.
    /// </summary>
    public static void LoadStrict(nn.Module model, WeightsOnDisk weights, string source)
    {
        var expected = model.state_dict();
        CheckStrict(expected, weights.Tensors, key => weights.Tensors[key].Shape, source);
        using var noGrad = no_grad();
        foreach (var (key, target) in expected)
        {
            var stored = weights.Tensors[key];
            using (var value = stored.ReadFloat())
                target.copy_(value);
            stored.Release();
        }
    }

    private static void CheckStrict<T>(IReadOnlyDictionary<string, Tensor> expected, IReadOnlyDictionary<string, T> weights, Func<string, long[]> shapeOf, string source)
    {
        var missing = expected.Keys.Where(k => !weights.ContainsKey(k)).Order().ToList();
        var unexpected = weights.Keys.Where(k => !expected.ContainsKey(k)).Order().ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
        {
            static string List(List<string> keys) => string.Join(", ", keys.Take(8)) + (keys.Count > 8 ? $", ... ({keys.Count} in all)" : "");
            var parts = new List<string>();
            if (missing.Count > 0) parts.Add($"missing keys: {List(missing)}");
            if (unexpected.Count > 0) parts.Add($"unexpected keys: {List(unexpected)}");
            throw new ModelFormatException($"The weights in '{source}' do not match the model its config describes ({string.Join("; ", parts)}). " +
                "Check that config.json belongs to these weights.");
        }
        foreach (var (key, target) in expected)
        {
            var shape = shapeOf(key);
            if (!target.shape.SequenceEqual(shape))
                throw new ModelFormatException($"'{source}': tensor '{key}' has shape [{string.Join(", ", shape)}] but the config implies [{string.Join(", ", target.shape)}].");
        }
    }

    /// <summary>Saves a model in diffusers layout: config.json + diffusion_pytorch_model.safetensors.</summary>
    public static void Save(DiffusionModel model, string folder, IReadOnlyDictionary<string, string>? metadata = null)
    {
        Directory.CreateDirectory(folder);
        var config = model.ConfigToJson();
        File.WriteAllText(Path.Combine(folder, ModelFolder.Config), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        if (metadata is not null) foreach (var (k, v) in metadata) meta[k] = v;
        var state = model.state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal);
        SafetensorsWriter.Write(Path.Combine(folder, ModelFolder.Weights), state, meta);
    }
}

/// <summary>One tensor of a <see cref="WeightsOnDisk"/>: where it is stored, read only when asked.</summary>
public sealed record StoredTensor(SafetensorsFile File, string Name)
{
    public long[] Shape => File.Entries[Name].Shape;

    /// <summary>A new float32 CPU tensor with its values (F16/BF16 upcast); the caller disposes it.</summary>
    public Tensor ReadFloat() => File.ReadFloat(Name);

    /// <summary>Lets go of its mapped pages once read (see <see cref="SafetensorsFile.Release"/>).</summary>
    public void Release() => File.Release(Name);
}

/// <summary>
/// A model's weights as they lie on disk, memory-mapped: the tensors by name (which a family may rename before loading,
/// e.g. legacy attention keys), each read only when copied into the model. Disposing it unmaps the files.
/// </summary>
public sealed class WeightsOnDisk : IDisposable
{
    private readonly List<SafetensorsFile> _files = [];

    public Dictionary<string, StoredTensor> Tensors { get; } = new(StringComparer.Ordinal);

    /// <summary>Opens one safetensors file with all its tensors (e.g. a CLIP text encoder's model.safetensors).</summary>
    public static WeightsOnDisk OpenFile(string path)
    {
        var weights = new WeightsOnDisk();
        var file = weights.Add(SafetensorsFile.Open(path));
        foreach (var key in file.Entries.Keys) weights.Tensors[key] = new StoredTensor(file, key);
        return weights;
    }

    internal SafetensorsFile Add(SafetensorsFile file)
    {
        _files.Add(file);
        return file;
    }

    public void Dispose()
    {
        foreach (var file in _files) file.Dispose();
        _files.Clear();
    }
}
