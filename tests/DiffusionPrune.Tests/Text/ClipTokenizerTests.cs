using System.Text.Json;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.TextEncoding;

namespace DiffusionPrune.Tests.Text;

/// <summary>
/// The CLIP tokenizer against the clip-text-small fixture, made with OpenAI's own simple_tokenizer.py and its BPE
/// file: the BPE ids of every prompt in case.json and the padded input_ids in io.safetensors.
/// </summary>
public class ClipTokenizerTests
{
    /// <summary>The tokenizer folder of the fixture (the same files as sd-pipeline-small's tokenizer/).</summary>
    internal static string TokenizerFolder => Fixtures.Diffusers("clip-text-small", "pipeline", "tokenizer");

    // Loading parses a 49,408-entry vocabulary and 48,894 merges; one instance serves every test (the tokenizer is thread-safe).
    internal static readonly Lazy<ClipTokenizer> Shared = new(() => ClipTokenizer.Load(TokenizerFolder));

    internal static (string[] Prompts, int[][] BpeIds) Case()
    {
        using var json = JsonDocument.Parse(File.ReadAllText(Fixtures.Diffusers("clip-text-small", "case.json")));
        var root = json.RootElement;
        var prompts = root.GetProperty("prompts").EnumerateArray().Select(p => p.GetString()!).ToArray();
        var ids = root.GetProperty("bpe_ids_without_special_tokens").EnumerateArray()
            .Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        return (prompts, ids);
    }

    public static TheoryData<int> PromptIndices => new(Enumerable.Range(0, Case().Prompts.Length));

    [Theory]
    [MemberData(nameof(PromptIndices))]
    public void Each_fixture_prompt_gives_the_reference_bpe_ids(int index)
    {
        var (prompts, expected) = Case();
        Assert.Equal(expected[index], Shared.Value.Encode(prompts[index]));
    }

    [Fact]
    public void Each_fixture_prompt_gives_the_reference_input_ids_padded_with_the_end_token()
    {
        var (prompts, bpeIds) = Case();
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("clip-text-small", "io.safetensors"));
        using var reference = io.Read("input_ids");
        Assert.Equal([prompts.Length, 77L], reference.shape);
        var expected = reference.data<long>().ToArray();
        var tokenizer = Shared.Value;
        for (int i = 0; i < prompts.Length; i++)
        {
            var tokens = tokenizer.EncodeForModel(prompts[i]);
            Assert.Equal(expected.AsSpan(i * 77, 77).ToArray(), tokens.InputIds);
            int real = Math.Min(bpeIds[i].Length, 75) + 2;
            Assert.Equal(Enumerable.Repeat(1L, real).Concat(Enumerable.Repeat(0L, 77 - real)), tokens.AttentionMask);
        }
    }

    [Fact]
    public void The_start_end_and_pad_tokens_come_from_the_tokenizer_config()
    {
        var tokenizer = Shared.Value;
        Assert.Equal(49408, tokenizer.VocabSize);
        Assert.Equal(49406, tokenizer.StartOfTextId);
        Assert.Equal(49407, tokenizer.EndOfTextId);
        Assert.Equal(49407, tokenizer.PadId); // SD 1.x pads with <|endoftext|>
        Assert.Equal(77, tokenizer.ModelMaxLength);
    }

    [Fact]
    public void A_90_word_prompt_is_cut_to_75_ids_and_still_ends_with_the_end_token()
    {
        var tokenizer = Shared.Value;
        string prompt = string.Join(' ', Enumerable.Repeat("the", 90));
        var ids = tokenizer.Encode(prompt);
        Assert.Equal(90, ids.Length);

        var tokens = tokenizer.EncodeForModel(prompt);
        Assert.Equal(77, tokens.InputIds.Length);
        Assert.Equal(tokenizer.StartOfTextId, tokens.InputIds[0]);
        Assert.Equal(ids.Take(75).Select(i => (long)i), tokens.InputIds.Skip(1).Take(75));
        Assert.Equal(tokenizer.EndOfTextId, tokens.InputIds[76]);
        Assert.All(tokens.AttentionMask, m => Assert.Equal(1L, m));
    }

    [Fact]
    public void The_empty_prompt_is_the_start_and_end_tokens_then_padding()
    {
        var tokenizer = Shared.Value;
        Assert.Empty(tokenizer.Encode(""));
        Assert.Empty(tokenizer.Encode("  \t\n "));
        var tokens = tokenizer.EncodeForModel("");
        Assert.Equal([tokenizer.StartOfTextId, tokenizer.EndOfTextId], tokens.InputIds[..2]);
        Assert.All(tokens.InputIds[2..], id => Assert.Equal(tokenizer.PadId, id));
        Assert.Equal([1L, 1L], tokens.AttentionMask[..2]);
        Assert.All(tokens.AttentionMask[2..], m => Assert.Equal(0L, m));
    }

    [Fact]
    public void A_shorter_max_length_pads_and_cuts_to_that_length()
    {
        var tokenizer = Shared.Value;
        var ids = tokenizer.Encode("a photograph of an astronaut riding a horse"); // 8 ids
        var cut = tokenizer.EncodeForModel("a photograph of an astronaut riding a horse", maxLength: 6);
        Assert.Equal(new long[] { tokenizer.StartOfTextId, ids[0], ids[1], ids[2], ids[3], tokenizer.EndOfTextId }, cut.InputIds);
        Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.EncodeForModel("a", maxLength: 1));
    }

    /// <summary>
    /// Expected ids from OpenAI's clip/simple_tokenizer.py (openai/CLIP at its current main) with its own
    /// bpe_simple_vocab_16e6.txt.gz — whose vocabulary equals the fixture's vocab.json — and ftfy.fix_text
    /// replaced by Unicode NFC, run once to write these lists down. They exercise what the ASCII fixture prompts
    /// cannot: the byte-to-unicode table (accents, a dash and curly quotes, emoji, CJK, Greek), NFC composition
    /// of "e" + combining acute, HTML unescaping, and digits split one by one.
    /// </summary>
    [Theory]
    [InlineData("café naïve — “quotes” 😀 日本語", new[] { 15304, 1097, 35689, 563, 2005, 728, 506, 5808, 728, 507, 7334, 39121, 44353, 34002, 508 })]
    [InlineData("Straße ÜBER Ελλάδα", new[] { 1894, 127, 253, 324, 6522, 1516, 138, 113, 138, 119, 138, 119, 138, 105, 138, 112, 138, 365 })]
    [InlineData("fish &amp; chips &lt;3", new[] { 2759, 261, 8855, 283, 274 })]
    [InlineData("cafe\u0301", new[] { 15304 })]
    [InlineData("hello<|endoftext|>world", new[] { 3306, 49407, 1002 })]
    [InlineData("tab\there\n\nnewline  ", new[] { 14724, 763, 1218, 1148 })]
    [InlineData("A photo of 100,000 🐱🐶!", new[] { 320, 1125, 539, 272, 271, 271, 267, 271, 271, 271, 35710, 14466, 256 })]
    public void Non_ascii_text_special_tokens_and_html_match_openai_simple_tokenizer(string text, int[] expected)
    {
        Assert.Equal(expected, Shared.Value.Encode(text));
    }

    [Fact]
    public void Encoding_the_same_words_twice_gives_the_same_ids_from_the_cache()
    {
        var tokenizer = Shared.Value;
        var first = tokenizer.Encode("an astronaut riding an astronaut");
        Assert.Equal(first, tokenizer.Encode("an astronaut riding an astronaut"));
        Assert.Equal(first[1], first[4]);
    }

    [Fact]
    public void A_folder_without_vocab_json_is_refused_with_a_message_naming_it()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(TokenizerFolder, ClipTokenizer.MergesFile), temp.File(ClipTokenizer.MergesFile));
        var error = Assert.Throws<ModelFormatException>(() => ClipTokenizer.Load(temp.Path));
        Assert.Contains("vocab.json", error.Message);
        Assert.Contains(temp.Path, error.Message);
    }

    [Fact]
    public void A_folder_without_merges_txt_is_refused_with_a_message_naming_it()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(TokenizerFolder, ClipTokenizer.VocabFile), temp.File(ClipTokenizer.VocabFile));
        var error = Assert.Throws<ModelFormatException>(() => ClipTokenizer.Load(temp.Path));
        Assert.Contains("merges.txt", error.Message);
    }

    [Fact]
    public void A_missing_folder_is_refused_with_its_path()
    {
        string missing = Path.Combine(Path.GetTempPath(), "no-such-tokenizer-" + Guid.NewGuid().ToString("N"));
        var error = Assert.Throws<DirectoryNotFoundException>(() => ClipTokenizer.Load(missing));
        Assert.Contains(missing, error.Message);
    }

    [Fact]
    public void A_special_tokens_map_overrides_the_pad_token_as_stable_diffusion_2_does()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(TokenizerFolder, ClipTokenizer.VocabFile), temp.File(ClipTokenizer.VocabFile));
        File.Copy(Path.Combine(TokenizerFolder, ClipTokenizer.MergesFile), temp.File(ClipTokenizer.MergesFile));
        File.Copy(Path.Combine(TokenizerFolder, ClipTokenizer.ConfigFile), temp.File(ClipTokenizer.ConfigFile));
        // SD 2.x pads with "!" (id 0); newer transformers write special tokens as AddedToken objects.
        File.WriteAllText(temp.File(ClipTokenizer.SpecialTokensFile),
            """{"pad_token": {"content": "!", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false}}""");
        var tokenizer = ClipTokenizer.Load(temp.Path);
        Assert.Equal("!", tokenizer.PadToken);
        Assert.Equal(0, tokenizer.PadId);
        var tokens = tokenizer.EncodeForModel("a horse");
        Assert.Equal(new long[] { 49406, 320, 4558, 49407, 0 }, tokens.InputIds[..5]);
        Assert.All(tokens.InputIds[4..], id => Assert.Equal(0L, id));
    }

    [Fact]
    public void A_pad_token_missing_from_the_vocabulary_is_refused_with_its_name()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(TokenizerFolder, ClipTokenizer.VocabFile), temp.File(ClipTokenizer.VocabFile));
        File.Copy(Path.Combine(TokenizerFolder, ClipTokenizer.MergesFile), temp.File(ClipTokenizer.MergesFile));
        File.WriteAllText(temp.File(ClipTokenizer.ConfigFile), """{"pad_token": "<|pad|>"}""");
        var error = Assert.Throws<ModelFormatException>(() => ClipTokenizer.Load(temp.Path));
        Assert.Contains("<|pad|>", error.Message);
    }

    [Fact]
    public void A_pipeline_folder_loads_its_tokenizer_subfolder()
    {
        var tokenizer = ClipTokenizer.Load(Fixtures.Diffusers("sd-pipeline-small", "pipeline"));
        var (prompts, expected) = Case();
        Assert.Equal(expected[1], tokenizer.Encode(prompts[1]));
    }

    [Fact]
    public void Clean_collapses_whitespace_unescapes_html_and_lower_cases()
    {
        Assert.Equal("a red cube & a sphere", ClipTokenizer.Clean("  A   RED\tcube &amp;amp; a\n\nSPHERE  "));
    }
}
