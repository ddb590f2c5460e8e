using System.Collections.Concurrent;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.TextEncoding;

namespace DiffusionPrune.Studio.Export;

/// <summary>The ids one text gives a pipeline's text encoder: <see cref="ClipTokenizer.EncodeForModel"/>'s, with how many BPE tokens the text had.</summary>
/// <param name="InputIds">[startoftext] + at most model_max_length - 2 ids + [endoftext], padded to model_max_length.</param>
/// <param name="Tokens">The text's BPE tokens before truncation (start and end tokens not counted).</param>
/// <param name="Truncated">True when the text had more tokens than fit and its end was cut.</param>
public sealed record TokenizedText(long[] InputIds, int Tokens, bool Truncated);

/// <summary>
/// The CLIP tokenizers of exported ONNX pipeline bundles, for the on-device page: the browser runs the text encoder but not
/// our C# tokenizer, so the server turns prompts into ids with the bundle's own <c>tokenizer/</c> files. A tokenizer is
/// loaded once per bundle and kept while its vocab.json and merges.txt are unchanged.
/// </summary>
public sealed class BundleTokenizers
{
    private readonly ConcurrentDictionary<string, (DateTime Vocab, DateTime Merges, ClipTokenizer Tokenizer)> _loaded = new(StringComparer.Ordinal);

    /// <summary>The tokenizer of <paramref name="bundle"/>, which must be a pipeline; throws <see cref="Models.ModelFormatException"/> (naming the file at fault) when its files are missing or broken.</summary>
    public ClipTokenizer For(BundleEntry bundle)
    {
        if (!bundle.IsPipeline)
            throw new ArgumentException($"Bundle '{bundle.Name}' is a {bundle.ClassName ?? "weights-only"} bundle, not an {OnnxPipelineLayout.ClassName}; only a pipeline has a tokenizer.", nameof(bundle));
        string folder = Path.Combine(bundle.Folder, OnnxPipelineLayout.TokenizerFolder);
        DateTime vocab = File.GetLastWriteTimeUtc(Path.Combine(folder, ClipTokenizer.VocabFile)), merges = File.GetLastWriteTimeUtc(Path.Combine(folder, ClipTokenizer.MergesFile));
        if (_loaded.TryGetValue(folder, out var held) && held.Vocab == vocab && held.Merges == merges) return held.Tokenizer;
        var tokenizer = ClipTokenizer.Load(folder);
        _loaded[folder] = (vocab, merges, tokenizer);
        return tokenizer;
    }

    /// <summary><paramref name="text"/> as the pipeline's text encoder takes it (model_max_length ids).</summary>
    public TokenizedText Tokenize(BundleEntry bundle, string text)
    {
        var tokenizer = For(bundle);
        int tokens = tokenizer.Encode(text).Length;
        return new TokenizedText(tokenizer.EncodeForModel(text, tokenizer.ModelMaxLength).InputIds, tokens, tokens > tokenizer.ModelMaxLength - 2);
    }
}
