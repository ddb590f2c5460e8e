using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Pipeline.StableDiffusion;

namespace DiffusionPrune.Studio.Catalog;

/// <summary>One component of a Stable Diffusion pipeline folder, as its model page shows it.</summary>
/// <param name="Name">Its key in model_index.json and its subfolder (<c>unet</c>).</param>
/// <param name="ClassName">The class model_index.json names for it (<c>UNet2DConditionModel</c>).</param>
/// <param name="Parameters">Parameters counted from its safetensors headers (no weights are read); null for configs (tokenizer, scheduler).</param>
/// <param name="SafetensorsBytes">Its weights on disk.</param>
/// <param name="Details">What it is, from its config: widths, layers, latent size, schedule.</param>
public sealed record PipelineComponentSummary(string Name, string ClassName, long? Parameters, long SafetensorsBytes, string Details);

/// <summary>
/// Describes a pipeline folder's components from their configs and safetensors headers alone, so a multi-gigabyte
/// pipeline's page opens without loading it (sampling loads it, in a job).
/// </summary>
public static class PipelineComponents
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>The components model_index.json lists as present, in pipeline order (tokenizer, text encoder, U-Net, VAE, scheduler, then others).</summary>
    /// <exception cref="ModelFormatException">model_index.json is malformed (the catalog lists such a folder with its problem first).</exception>
    public static IReadOnlyList<PipelineComponentSummary> Describe(string folder)
    {
        var index = PipelineIndex.Load(folder);
        string[] order = ["tokenizer", "text_encoder", "unet", "vae", "scheduler"];
        return index.Components.Values.Where(c => !c.IsAbsent)
            .OrderBy(c => Array.IndexOf(order, c.Name) is var i && i >= 0 ? i : order.Length).ThenBy(c => c.Name, StringComparer.Ordinal)
            .Select(c => Describe(index.Folder, c))
            .ToList();
    }

    /// <summary>The image size the pipeline makes by default: the U-Net's sample size times the VAE's downscale, e.g. "512 x 512".</summary>
    public static string? ImageSize(string folder)
    {
        var unet = ReadJson(Path.Combine(folder, "unet", ModelFolder.Config));
        var vae = ReadJson(Path.Combine(folder, "vae", ModelFolder.Config));
        if (unet is null || vae is null) return null;
        int factor = 1 << Math.Max(0, (vae["block_out_channels"] as JsonArray)?.Count - 1 ?? 0);
        return unet["sample_size"] switch
        {
            JsonArray size when size.Count == 2 => $"{(int)size[0]! * factor} x {(int)size[1]! * factor}",
            JsonValue size when size.TryGetValue<int>(out var s) => $"{s * factor} x {s * factor}",
            _ => null,
        };
    }

    private static PipelineComponentSummary Describe(string folder, PipelineComponent component)
    {
        string subfolder = Path.Combine(folder, component.Name);
        var files = WeightFiles(subfolder);
        long bytes = files.Sum(f => new FileInfo(f).Length);
        long? parameters = files.Count == 0 ? null : CountParameters(files);
        string details;
        try
        {
            details = component.Name switch
            {
                "tokenizer" => TokenizerDetails(subfolder),
                "text_encoder" => TextEncoderDetails(subfolder),
                "unet" => UnetDetails(subfolder),
                "vae" => VaeDetails(subfolder),
                "scheduler" => SchedulerDetails(subfolder),
                _ => "not part of a StableDiffusionPipeline's loop: not loaded",
            };
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or InvalidOperationException or FormatException || UserErrors.Is(e))
        {
            details = $"cannot be read: {e.Message.TrimEnd('.')}";
        }
        return new PipelineComponentSummary(component.Name, component.ClassName ?? "?", parameters, bytes, details);
    }

    /// <summary>
    /// The safetensors files that make up a component's weights: the plain ones when there are any (a <c>.fp16</c> variant
    /// beside them is the same weights again), otherwise the variants.
    /// </summary>
    private static List<string> WeightFiles(string subfolder)
    {
        if (!Directory.Exists(subfolder)) return [];
        var all = Directory.EnumerateFiles(subfolder, "*.safetensors").Order(StringComparer.Ordinal).ToList();
        var plain = all.Where(f => !Path.GetFileNameWithoutExtension(f).Contains('.')).ToList();
        return plain.Count > 0 ? plain : all;
    }

    /// <summary>The elements of every tensor the files hold, from their headers.</summary>
    private static long? CountParameters(IEnumerable<string> files)
    {
        try
        {
            long total = 0;
            foreach (var file in files)
            {
                using var weights = SafetensorsFile.Open(file);
                foreach (var entry in weights.Entries.Values)
                    total += entry.Shape.Aggregate(1L, (a, b) => a * b);
            }
            return total;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException || UserErrors.Is(e))
        {
            return null; // a damaged file shows no count; loading it says what is wrong
        }
    }

    private static string TokenizerDetails(string subfolder)
    {
        var parts = new List<string>();
        string vocab = Path.Combine(subfolder, "vocab.json");
        if (File.Exists(vocab))
        {
            using var stream = File.OpenRead(vocab);
            using var document = JsonDocument.Parse(stream);
            parts.Add(string.Create(Inv, $"vocabulary {document.RootElement.EnumerateObject().Count():N0} tokens"));
        }
        if (ReadJson(Path.Combine(subfolder, "tokenizer_config.json"))?["model_max_length"] is JsonValue max && max.TryGetValue<long>(out var length))
            parts.Add(string.Create(Inv, $"prompts padded to {length} tokens"));
        return parts.Count > 0 ? string.Join(", ", parts) : "CLIP BPE";
    }

    private static string TextEncoderDetails(string subfolder)
    {
        var config = Config(subfolder);
        return string.Create(Inv, $"width {config["hidden_size"]}, {config["num_hidden_layers"]} layers, {config["num_attention_heads"]} heads");
    }

    private static string UnetDetails(string subfolder)
    {
        var config = Config(subfolder);
        var estimate = ModelFamilies.EstimateFolder(subfolder); // from the config alone
        string text = string.Create(Inv,
            $"latents {config["in_channels"]} x {estimate.SampleSize[0]} x {estimate.SampleSize[^1]}, cross-attention width {Flat(config["cross_attention_dim"])}, " +
            $"{estimate.Macs:N0} MACs per step and image");
        if (config[Models.ModelStructure.JsonKey] is JsonObject structure)
        {
            int narrowed = structure.Where(p => p.Value is JsonObject o && o.Count > 0 && p.Key != "removed_layers").Sum(p => ((JsonObject)p.Value!).Count);
            int removed = (structure["removed_layers"] as JsonArray)?.Count ?? 0;
            text += $"; pruned: {narrowed} layers narrowed, {removed} removed";
        }
        return text;
    }

    private static string VaeDetails(string subfolder)
    {
        var config = Config(subfolder);
        int factor = 1 << Math.Max(0, (config["block_out_channels"] as JsonArray)?.Count - 1 ?? 0);
        return string.Create(Inv, $"{config["latent_channels"]} latent channels, images {factor}x the latents, scaling factor {config["scaling_factor"]}");
    }

    private static string SchedulerDetails(string subfolder)
    {
        var config = ReadJson(Path.Combine(subfolder, ModelFolder.SchedulerConfig))
            ?? throw new FileNotFoundException($"{Path.Combine(subfolder, ModelFolder.SchedulerConfig)} is missing.");
        return string.Join(", ", new[] { "_class_name", "beta_schedule", "prediction_type", "timestep_spacing" }
            .Where(key => config[key] is JsonValue).Select(key => key == "_class_name" ? $"config {config[key]}" : $"{key} {config[key]}"));
    }

    private static string Flat(JsonNode? node) => node is JsonArray array ? string.Join("/", array.Select(n => n?.ToString())) : node?.ToString() ?? "?";

    private static JsonObject Config(string subfolder) =>
        ReadJson(Path.Combine(subfolder, ModelFolder.Config)) ?? throw new FileNotFoundException($"{Path.Combine(subfolder, ModelFolder.Config)} is missing.");

    private static JsonObject? ReadJson(string path)
    {
        try
        {
            return File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path)) as JsonObject : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }
}
