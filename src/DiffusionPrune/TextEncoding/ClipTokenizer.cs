// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL, Formats/Messages.cs, Formats/ModelFolder.cs and Models/ConfigJson.cs here.
using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;

namespace DiffusionPrune.TextEncoding;

/// <summary>
/// A prompt ready for a CLIP text encoder: <see cref="InputIds"/> is [startoftext] + BPE ids + [endoftext] padded
/// to a fixed length with the pad token, and <see cref="AttentionMask"/> is 1 on the real tokens (start and end
/// included) and 0 on the padding — needed because SD 1.x pads with the end token itself, so ids alone cannot
/// say where the prompt ends.
/// </summary>
public sealed record ClipTokens(long[] InputIds, long[] AttentionMask);

/// <summary>
/// CLIP's byte-level BPE tokenizer, as OpenAI's <c>simple_tokenizer.py</c> and Hugging Face's <c>CLIPTokenizer</c>
/// compute it, read from a Hugging Face tokenizer folder (<c>vocab.json</c> + <c>merges.txt</c>, with the special
/// tokens from <c>tokenizer_config.json</c> / <c>special_tokens_map.json</c> when present).
/// <para>Written here rather than taken from Microsoft.ML.Tokenizers: its BpeTokenizer with CLIP's regex and the
/// <c>&lt;/w&gt;</c> suffix reproduces the ASCII reference prompts, but it has no byte-to-unicode step, so every
/// non-ASCII word ("café", an emoji, Greek) comes out as unknown tokens where CLIP has real ids.</para>
/// <para>The clean-up is ftfy-less: Unicode NFC (the part of <c>ftfy.fix_text</c> that changes well-formed text),
/// HTML unescaping twice, whitespace runs collapsed to one space, trimmed, lower-cased. Mojibake repair, the
/// rest of ftfy, is not attempted.</para>
/// Thread-safe: the word cache is concurrent and nothing else changes after loading.
/// </summary>
public sealed partial class ClipTokenizer
{
    public const string VocabFile = "vocab.json";
    public const string MergesFile = "merges.txt";
    public const string ConfigFile = "tokenizer_config.json";
    public const string SpecialTokensFile = "special_tokens_map.json";

    public const string StartOfText = "<|startoftext|>";
    public const string EndOfText = "<|endoftext|>";

    /// <summary>The context length of every released CLIP text encoder (and so of Stable Diffusion 1.x / 2.x).</summary>
    public const int DefaultMaxLength = 77;

    /// <summary>The end-of-word marker CLIP's merges put on a word's last symbol, so "the" at a word's end differs from "the" inside "theme".</summary>
    private const string EndOfWord = "</w>";

    /// <summary>Distinct words kept in the cache before it is cleared; prompts reuse a few thousand words at most.</summary>
    private const int CacheLimit = 50_000;

    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<(string, string), int> _mergeRanks;
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int[]> _specialTokens;

    /// <summary>Each of the 256 byte values as the printable character that stands for it in the vocabulary.</summary>
    private static readonly string[] ByteToUnicode = BuildByteToUnicode();

    public int VocabSize => _vocab.Count;
    public int StartOfTextId { get; }
    public int EndOfTextId { get; }
    public int PadId { get; }
    public int UnknownId { get; }
    public string PadToken { get; }

    /// <summary>tokenizer_config.json's <c>model_max_length</c> (77 when absent or set to the "no limit" sentinel).</summary>
    public int ModelMaxLength { get; }

    private ClipTokenizer(Dictionary<string, int> vocab, Dictionary<(string, string), int> mergeRanks, string bos, string eos, string pad, string unk,
        int modelMaxLength, string source)
    {
        _vocab = vocab;
        _mergeRanks = mergeRanks;
        int Id(string token, string role) => vocab.TryGetValue(token, out int id) ? id
            : throw new ModelFormatException($"{source}: the {role} token '{token}' is not in {VocabFile}. Check that the tokenizer files belong together.");
        StartOfTextId = Id(bos, "start (bos)");
        EndOfTextId = Id(eos, "end (eos)");
        PadId = Id(pad, "pad");
        UnknownId = Id(unk, "unknown (unk)");
        PadToken = pad;
        ModelMaxLength = modelMaxLength;
        // OpenAI's tokenizer seeds its cache with the two special tokens, so a literal "<|endoftext|>" in a prompt is that
        // token, not BPE pieces; kept apart here so clearing the word cache cannot drop them.
        _specialTokens = new(StringComparer.Ordinal) { [StartOfText] = [Id(StartOfText, "start of text")], [EndOfText] = [Id(EndOfText, "end of text")] };
    }

    /// <summary>
    /// Loads a tokenizer folder, or the <c>tokenizer/</c> subfolder of a pipeline folder (one with model_index.json).
    /// Special tokens: special_tokens_map.json overrides tokenizer_config.json, as in Hugging Face; absent, both
    /// default to <c>&lt;|startoftext|&gt;</c> / <c>&lt;|endoftext|&gt;</c>, and the pad token to the end token (SD 1.x).
    /// </summary>
    public static ClipTokenizer Load(string path)
    {
        string folder = ResolveFolder(path);
        var vocab = ReadVocab(Path.Combine(folder, VocabFile));
        var ranks = ReadMerges(Path.Combine(folder, MergesFile));

        var config = ReadOptionalJson(Path.Combine(folder, ConfigFile));
        var specials = ReadOptionalJson(Path.Combine(folder, SpecialTokensFile));
        string Token(string key, string @default) =>
            TokenContent(specials, key, Path.Combine(folder, SpecialTokensFile)) ?? TokenContent(config, key, Path.Combine(folder, ConfigFile)) ?? @default;
        string eos = Token("eos_token", EndOfText);

        int maxLength = DefaultMaxLength;
        if (config?["model_max_length"] is JsonValue maxValue)
        {
            // Hugging Face writes 1e30 (VERY_LARGE_INTEGER) for "no limit"; CLIP's position table is the real limit then.
            if (!maxValue.TryGetValue<double>(out double m) || m != Math.Floor(m) || m < 2)
                throw new ModelFormatException($"{Path.Combine(folder, ConfigFile)}: model_max_length must be a whole number of at least 2, not {maxValue.ToJsonString()}.");
            maxLength = m > int.MaxValue ? DefaultMaxLength : (int)m;
        }
        return new ClipTokenizer(vocab, ranks, Token("bos_token", StartOfText), eos, Token("pad_token", eos), Token("unk_token", EndOfText), maxLength, folder);
    }

    /// <summary>The BPE ids of <paramref name="text"/> without start/end tokens (OpenAI's <c>SimpleTokenizer.encode</c>).</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        foreach (Match match in WordPattern().Matches(Clean(text)))
        {
            var bytes = Encoding.UTF8.GetBytes(match.Value);
            var word = new StringBuilder(bytes.Length);
            foreach (byte b in bytes) word.Append(ByteToUnicode[b]);
            ids.AddRange(WordIds(word.ToString()));
        }
        return ids.ToArray();
    }

    /// <summary>
    /// What a Stable Diffusion pipeline feeds its text encoder: [startoftext] + at most <paramref name="maxLength"/> - 2
    /// BPE ids + [endoftext], padded to <paramref name="maxLength"/> with the pad token (Hugging Face's
    /// <c>padding="max_length", truncation=True</c>). A longer prompt is cut, keeping the end token last.
    /// </summary>
    public ClipTokens EncodeForModel(string text, int maxLength = DefaultMaxLength)
    {
        if (maxLength < 2)
            throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, "maxLength must leave room for the start and end tokens (at least 2).");
        var ids = Encode(text);
        int kept = Math.Min(ids.Length, maxLength - 2);
        var inputIds = new long[maxLength];
        var mask = new long[maxLength];
        inputIds[0] = StartOfTextId;
        for (int i = 0; i < kept; i++) inputIds[i + 1] = ids[i];
        inputIds[kept + 1] = EndOfTextId;
        for (int i = kept + 2; i < maxLength; i++) inputIds[i] = PadId;
        Array.Fill(mask, 1L, 0, kept + 2);
        return new ClipTokens(inputIds, mask);
    }

    /// <summary>simple_tokenizer's <c>whitespace_clean(basic_clean(text)).lower()</c>, without ftfy (see the class summary).</summary>
    public static string Clean(string text)
    {
        text = text.Normalize(NormalizationForm.FormC);
        text = WebUtility.HtmlDecode(WebUtility.HtmlDecode(text));
        text = Whitespace().Replace(text.Trim(), " ").Trim();
        return text.ToLowerInvariant();
    }

    /// <summary>One pre-tokenized word (already mapped byte by byte to vocabulary characters) to its ids, through the cache.</summary>
    private int[] WordIds(string word)
    {
        if (_specialTokens.TryGetValue(word, out var special)) return special;
        if (_cache.TryGetValue(word, out var cached)) return cached;
        var ids = Bpe(word).Select(symbol => _vocab.TryGetValue(symbol, out int id) ? id : UnknownId).ToArray();
        if (_cache.Count >= CacheLimit) _cache.Clear();
        _cache[word] = ids;
        return ids;
    }

    /// <summary>
    /// Byte-pair merging as simple_tokenizer's <c>bpe</c>: start from single characters with <c>&lt;/w&gt;</c> on the last,
    /// then repeatedly merge every occurrence (left to right) of the adjacent pair with the lowest merge rank.
    /// </summary>
    private List<string> Bpe(string word)
    {
        var symbols = new List<string>(word.Length);
        for (int i = 0; i < word.Length - 1; i++) symbols.Add(word[i].ToString());
        symbols.Add(word[^1] + EndOfWord);

        while (symbols.Count > 1)
        {
            // The lowest-ranked pair present; ties cannot happen because each pair has one rank.
            int bestRank = int.MaxValue;
            (string First, string Second) best = default;
            for (int i = 0; i < symbols.Count - 1; i++)
            {
                if (_mergeRanks.TryGetValue((symbols[i], symbols[i + 1]), out int rank) && rank < bestRank)
                    (bestRank, best) = (rank, (symbols[i], symbols[i + 1]));
            }
            if (bestRank == int.MaxValue) break;

            var merged = new List<string>(symbols.Count);
            for (int i = 0; i < symbols.Count;)
            {
                if (i < symbols.Count - 1 && symbols[i] == best.First && symbols[i + 1] == best.Second)
                {
                    merged.Add(best.First + best.Second);
                    i += 2;
                }
                else
                {
                    merged.Add(symbols[i]);
                    i++;
                }
            }
            symbols = merged;
        }
        return symbols;
    }

    /// <summary>
    /// GPT-2's reversible byte-to-unicode table: printable Latin-1 bytes stand for themselves, the other 68 bytes
    /// (control characters, space, NBSP, soft hyphen) for U+0100 onwards, so no vocabulary entry holds whitespace.
    /// </summary>
    private static string[] BuildByteToUnicode()
    {
        var table = new string[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            table[b] = ((char)(printable ? b : 256 + next++)).ToString();
        }
        return table;
    }

    private static string ResolveFolder(string path)
    {
        if (File.Exists(path) && Path.GetFileName(path) is VocabFile or MergesFile or ConfigFile)
            path = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(path))
            throw new DirectoryNotFoundException($"No tokenizer folder at '{path}'. Give a CLIP tokenizer folder ({VocabFile} + {MergesFile}) or a Stable Diffusion pipeline folder.");
        if (!File.Exists(Path.Combine(path, VocabFile)) && File.Exists(Path.Combine(path, ModelFolder.PipelineIndex)) && Directory.Exists(Path.Combine(path, "tokenizer")))
            return Path.Combine(path, "tokenizer");
        return path;
    }

    private static Dictionary<string, int> ReadVocab(string path)
    {
        if (!File.Exists(path))
            throw new ModelFormatException($"'{Path.GetDirectoryName(path)}' has no {VocabFile}: a CLIP tokenizer folder needs {VocabFile} and {MergesFile} " +
                "(the tokenizer/ subfolder of a Stable Diffusion pipeline).");
        Dictionary<string, int>? vocab;
        try
        {
            vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(path));
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{path} is not a JSON object of token -> id: {Messages.OneLine(e.Message)}");
        }
        if (vocab is null || vocab.Count == 0)
            throw new ModelFormatException($"{path} holds no tokens.");
        var result = new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        if (result.Values.Any(id => id < 0))
            throw new ModelFormatException($"{path} has a negative token id.");
        return result;
    }

    private static Dictionary<(string, string), int> ReadMerges(string path)
    {
        if (!File.Exists(path))
            throw new ModelFormatException($"'{Path.GetDirectoryName(path)}' has no {MergesFile}: a CLIP tokenizer folder needs {VocabFile} and {MergesFile} " +
                "(the tokenizer/ subfolder of a Stable Diffusion pipeline).");
        var ranks = new Dictionary<(string, string), int>();
        int lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            // The first line is "#version: 0.2"; blank lines (a trailing newline) carry nothing.
            if (line.Length == 0 || (lineNumber == 1 && line.StartsWith("#version", StringComparison.Ordinal))) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
                throw new ModelFormatException($"{path} line {lineNumber}: a merge must be two symbols separated by one space, not '{line}'.");
            ranks.TryAdd((parts[0], parts[1]), ranks.Count);
        }
        if (ranks.Count == 0)
            throw new ModelFormatException($"{path} holds no merges.");
        return ranks;
    }

    private static JsonObject? ReadOptionalJson(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                ?? throw new ModelFormatException($"{path} must hold a JSON object.");
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{path} is not valid JSON: {Messages.OneLine(e.Message)}");
        }
    }

    /// <summary>A special token written as a string or, by newer Hugging Face versions, as an AddedToken object with "content".</summary>
    private static string? TokenContent(JsonObject? json, string key, string source) => json?[key] switch
    {
        null => null,
        JsonValue value when value.TryGetValue<string>(out var s) => s,
        JsonObject added when added["content"] is JsonValue content && content.TryGetValue<string>(out var s) => s,
        var other => throw new ModelFormatException($"{source}: '{key}' must be a token string or an object with \"content\", not {other.ToJsonString()}."),
    };

    /// <summary>
    /// simple_tokenizer's pattern: the special tokens, English contractions, letter runs, single digits, runs of other
    /// non-space characters. .NET matches UTF-16 units, so a letter outside the Basic Multilingual Plane (rare CJK,
    /// mathematical alphabets) falls in the last class instead of a letter run; emoji are "other" in both.
    /// </summary>
    [GeneratedRegex(@"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex WordPattern();

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();
}
