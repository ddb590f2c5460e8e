using System.Text.Json;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using static TorchSharp.torch;

namespace DiffusionPrune.Pipeline.StableDiffusion;

/// <summary>
/// Saved prompt embeddings, the calibration text of a Stable Diffusion U-Net without prompts to encode: a safetensors
/// file holding diffusers' <c>prompt_embeds</c> [N, tokens, width] (the text encoder's last_hidden_state, one row per
/// prompt; float32, float16 or bfloat16, read as float32) and, optionally, <c>negative_prompt_embeds</c> of the same
/// shape (the unconditional states guidance steers away from). What <c>safetensors.torch.save_file({"prompt_embeds":
/// ..., "negative_prompt_embeds": ...}, FILE)</c> writes from a diffusers pipeline's <c>encode_prompt</c>; other tensors
/// in the file are ignored. The optional metadata entry <c>prompts</c> (a JSON array of N strings) names the rows in
/// reports; without it they are named <c>prompt_embeds[i]</c>.
/// </summary>
public static class PromptEmbeddingsFile
{
    /// <summary>diffusers' name of the prompts' states.</summary>
    public const string PromptEmbedsName = "prompt_embeds";

    /// <summary>diffusers' name of the negative prompts' states.</summary>
    public const string NegativePromptEmbedsName = "negative_prompt_embeds";

    /// <summary>The metadata entry naming the rows: a JSON array of strings.</summary>
    public const string PromptsMetadata = "prompts";

    /// <summary>What the header says: the rows (prompts), tokens and width, whether negatives are saved, and the rows' names.</summary>
    public sealed record Header(int Count, int Tokens, int Width, bool HasNegative, IReadOnlyList<string> Labels);

    /// <summary>Reads and checks the header alone (no tensor is read); refuses a missing file, no or a malformed <c>prompt_embeds</c>, a negative of another shape, and names of the wrong count.</summary>
    public static Header ReadHeader(string path)
    {
        using var file = Open(path);
        return HeaderOf(file, path);
    }

    /// <summary>
    /// Loads the states as float32 on <paramref name="device"/>, checked against the U-Net's cross-attention
    /// <paramref name="width"/>. With <paramref name="negative"/> the negative states are the file's, else
    /// <paramref name="encodeEmpty"/>'s (the empty prompt encoded by the pipeline, one row per prompt), which must have the
    /// file's token count. The caller disposes the result.
    /// </summary>
    public static (PromptEmbeddings Embeddings, IReadOnlyList<string> Labels) Load(string path, int width, bool negative, Device device,
        Func<int, Tensor>? encodeEmpty = null)
    {
        using var file = Open(path);
        var header = HeaderOf(file, path);
        if (header.Width != width)
            throw new ArgumentException($"--prompt-embeddings '{path}': its states are {header.Width} wide, but this U-Net's cross-attention takes " +
                $"{width} (cross_attention_dim): they were encoded by another text encoder.");
        Tensor? prompt = null, uncond = null;
        try
        {
            using (var read = file.ReadFloat(PromptEmbedsName)) prompt = read.to(device);
            if (negative)
            {
                if (header.HasNegative)
                {
                    using var read = file.ReadFloat(NegativePromptEmbedsName);
                    uncond = read.to(device);
                }
                else
                {
                    uncond = (encodeEmpty ?? throw new ArgumentException($"--prompt-embeddings '{path}' holds no {NegativePromptEmbedsName}, which guidance needs; save them in the file."))(header.Count);
                    if (uncond.shape[1] != header.Tokens)
                    {
                        long tokens = uncond.shape[1];
                        throw new ArgumentException($"--prompt-embeddings '{path}': its states have {header.Tokens} tokens, but the empty prompt encodes to {tokens}, " +
                            $"and guidance needs both alike; save {NegativePromptEmbedsName} of the same shape in the file.");
                    }
                }
            }
            var result = new PromptEmbeddings(prompt, uncond);
            prompt = uncond = null;
            return (result, header.Labels);
        }
        finally
        {
            prompt?.Dispose();
            uncond?.Dispose();
        }
    }

    private static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"--prompt-embeddings '{path}' does not exist; give a safetensors file with {PromptEmbedsName} [prompts, tokens, width].", path);
        try
        {
            return SafetensorsFile.Open(path);
        }
        catch (SafetensorsFormatException e)
        {
            throw new ArgumentException($"--prompt-embeddings '{path}' is not a readable safetensors file: {e.Message}");
        }
    }

    private static Header HeaderOf(SafetensorsFile file, string path)
    {
        if (!file.Entries.TryGetValue(PromptEmbedsName, out var prompt))
            throw new ArgumentException($"--prompt-embeddings '{path}' holds no {PromptEmbedsName} (it has {(file.Entries.Count == 0 ? "no tensors" : string.Join(", ", file.Entries.Keys.Order(StringComparer.Ordinal)))}).");
        if (prompt.Shape.Length != 3 || prompt.Shape.Any(d => d < 1))
            throw new ArgumentException($"--prompt-embeddings '{path}': {PromptEmbedsName} must be [prompts, tokens, width], not [{string.Join(", ", prompt.Shape)}].");
        if (prompt.DType is not (SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16))
            throw new ArgumentException($"--prompt-embeddings '{path}': {PromptEmbedsName} must be float32, float16 or bfloat16, not {prompt.DType}.");
        bool hasNegative = file.Entries.TryGetValue(NegativePromptEmbedsName, out var negative);
        if (hasNegative && (!negative!.Shape.SequenceEqual(prompt.Shape) || negative.DType is not (SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16)))
            throw new ArgumentException($"--prompt-embeddings '{path}': {NegativePromptEmbedsName} must be a float tensor of {PromptEmbedsName}'s shape " +
                $"[{string.Join(", ", prompt.Shape)}], not {negative.DType} [{string.Join(", ", negative.Shape)}].");
        int count = checked((int)prompt.Shape[0]);
        IReadOnlyList<string> labels = Enumerable.Range(0, count).Select(i => $"{PromptEmbedsName}[{i}]").ToArray();
        if (file.Metadata.TryGetValue(PromptsMetadata, out var json))
        {
            string[]? names;
            try
            {
                names = JsonSerializer.Deserialize<string[]>(json);
            }
            catch (JsonException)
            {
                names = null;
            }
            if (names is null || names.Length != count || names.Any(n => n is null))
                throw new ArgumentException($"--prompt-embeddings '{path}': the metadata entry '{PromptsMetadata}' must be a JSON array of {count} strings, one per row of {PromptEmbedsName}.");
            labels = names;
        }
        return new Header(count, checked((int)prompt.Shape[1]), checked((int)prompt.Shape[2]), hasNegative, labels);
    }
}
