using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Importance;
using DiffusionPrune.Tests.Pipeline;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>
/// Saved prompt embeddings (<c>--prompt-embeddings FILE</c>, <see cref="PromptEmbeddingsFile"/>) as a pipeline's
/// calibration text: the states of the prompts, saved, prune exactly as the prompts do; without saved negatives the
/// empty prompt is encoded; a bad file, or one given where prompts are refused, is refused before anything is written.
/// </summary>
public class PromptEmbeddingsCalibrationTests(ITestOutputHelper output)
{
    private static readonly string[] Prompts = ["a red cube on a table", "a lighthouse by the sea"];

    private static PruneRequest Request(string pipeline, string method, string outputPath) => new()
    {
        ModelPath = pipeline,
        Method = method,
        TargetParams = 0.2,
        OutputPath = outputPath,
        Iterations = 2,
        Steps = 2,
        Calibration = 2,
        Seed = 4,
        EcoDiff = new EcoDiffOptions { BatchSize = 2, GuidanceScale = 7.5 },
        TeacherSamplesPerPrompt = method == "taylor" ? 1 : null, // taylor's calibration latents; refused where nothing samples them
        TeacherSampleSteps = method == "taylor" ? 2 : null,
        Taylor = new TaylorOptions { TimestepStride = 250 },
    };

    /// <summary>Writes the pipeline's encodings of <see cref="Prompts"/> (with the empty prompt's, when <paramref name="negatives"/>) as diffusers names them.</summary>
    private static string SaveEmbeddings(string pipeline, string path, bool negatives, bool names = true, bool fp16 = false)
    {
        using var states = StableDiffusionPipeline.EncodePromptsOf(pipeline, Prompts, classifierFreeGuidance: true);
        var tensors = new Dictionary<string, Tensor> { [PromptEmbeddingsFile.PromptEmbedsName] = fp16 ? states.PromptEmbeds.to(ScalarType.Float16) : states.PromptEmbeds };
        if (negatives) tensors[PromptEmbeddingsFile.NegativePromptEmbedsName] = fp16 ? states.NegativePromptEmbeds!.to(ScalarType.Float16) : states.NegativePromptEmbeds!;
        tensors["noise"] = randn(1, 4, 4, 4); // other tensors in the file are ignored
        SafetensorsWriter.Write(path, tensors, names ? new Dictionary<string, string> { [PromptEmbeddingsFile.PromptsMetadata] = JsonSerializer.Serialize(Prompts) } : null);
        return path;
    }

    private static JsonNode Settings(string pruned) => JsonNode.Parse(File.ReadAllText(Path.Combine(pruned, ModelFolder.PruneReport)))!["settings"]!;

    [Theory]
    [InlineData("ecodiff", true)]
    [InlineData("ecodiff", false)]
    [InlineData("taylor", true)]
    public void Saved_embeddings_of_the_prompts_prune_exactly_as_the_prompts_do(string method, bool negatives)
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string fromPrompts = temp.File("from-prompts"), fromFile = temp.File("from-file");
        string file = SaveEmbeddings(pipeline, temp.File("embeds.safetensors"), negatives);

        PruneRunner.Run(Request(pipeline, method, fromPrompts) with { Prompts = Prompts }, CPU, output.WriteLine);
        var report = PruneRunner.Run(Request(pipeline, method, fromFile) with { PromptEmbeddingsPath = file }, CPU, output.WriteLine);

        Assert.InRange(report.AchievedParams, 0.15, 0.25);
        Assert.Equal(File.ReadAllText(Path.Combine(fromPrompts, ModelFolder.PrunePlan)), File.ReadAllText(Path.Combine(fromFile, ModelFolder.PrunePlan)));
        var settings = Settings(fromFile);
        Assert.Equal(Prompts, settings["prompts"]!.AsArray().Select(p => (string)p!).ToArray());
        Assert.Equal("embeddings", (string?)settings["prompt_source"]);
        Assert.Equal("embeds.safetensors", (string?)settings["prompt_embeddings"]);
        Assert.True(File.Exists(Path.Combine(fromFile, ModelFolder.PipelineIndex)));
    }

    [Fact]
    public void Float16_embeddings_without_names_load_upcast_and_name_their_rows()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string file = SaveEmbeddings(pipeline, temp.File("embeds.safetensors"), negatives: true, names: false, fp16: true);

        var header = PromptEmbeddingsFile.ReadHeader(file);
        Assert.Equal((2, true), (header.Count, header.HasNegative));
        Assert.Equal(["prompt_embeds[0]", "prompt_embeds[1]"], header.Labels);
        var (embeddings, labels) = PromptEmbeddingsFile.Load(file, header.Width, negative: true, CPU);
        using (embeddings)
        {
            Assert.Equal(ScalarType.Float32, embeddings.PromptEmbeds.dtype);
            Assert.Equal(new long[] { 2, header.Tokens, header.Width }, embeddings.PromptEmbeds.shape);
            Assert.True(isfinite(embeddings.NegativePromptEmbeds!).all().item<bool>());
        }
        Assert.Equal(header.Labels, labels);

        var report = PruneRunner.Run(Request(pipeline, "ecodiff", temp.File("out")) with { PromptEmbeddingsPath = file }, CPU, output.WriteLine);
        Assert.InRange(report.AchievedParams, 0.15, 0.25);
        Assert.Equal(header.Labels, Settings(temp.File("out"))["prompts"]!.AsArray().Select(p => (string)p!).ToArray());
    }

    [Fact]
    public void Bad_files_and_embeddings_where_prompts_are_refused_are_refused_before_anything_is_written()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string good = SaveEmbeddings(pipeline, temp.File("good.safetensors"), negatives: true);
        string Message(PruneRequest request) => Assert.ThrowsAny<Exception>(() => PruneRunner.Run(request, CPU)).Message;

        Assert.Contains("give one of them", Message(Request(pipeline, "ecodiff", temp.File("a")) with { Prompts = Prompts, PromptEmbeddingsPath = good }));
        Assert.Contains("--prompt-embeddings calibrates the U-Net of a Stable Diffusion pipeline",
            Message(new PruneRequest { ModelPath = PruningTestSupport.UNetFixture, Method = "ecodiff", TargetParams = 0.2, OutputPath = temp.File("b"), PromptEmbeddingsPath = good }));
        Assert.Contains("magnitude does not read them. Leave --prompt-embeddings out", Message(Request(pipeline, "magnitude", temp.File("c")) with { PromptEmbeddingsPath = good }));
        Assert.Contains("does not exist", Message(Request(pipeline, "ecodiff", temp.File("d")) with { PromptEmbeddingsPath = temp.File("missing.safetensors") }));

        string noPrompt = temp.File("no-prompt.safetensors");
        SafetensorsWriter.Write(noPrompt, new Dictionary<string, Tensor> { ["embeds"] = zeros(2, 8, 32) });
        Assert.Contains("holds no prompt_embeds (it has embeds)", Message(Request(pipeline, "ecodiff", temp.File("e")) with { PromptEmbeddingsPath = noPrompt }));

        string flat = temp.File("flat.safetensors");
        SafetensorsWriter.Write(flat, new Dictionary<string, Tensor> { ["prompt_embeds"] = zeros(2, 32) });
        Assert.Contains("must be [prompts, tokens, width], not [2, 32]", Message(Request(pipeline, "ecodiff", temp.File("f")) with { PromptEmbeddingsPath = flat }));

        var header = PromptEmbeddingsFile.ReadHeader(good);
        string wide = temp.File("wide.safetensors");
        SafetensorsWriter.Write(wide, new Dictionary<string, Tensor> { ["prompt_embeds"] = zeros(2, header.Tokens, header.Width * 2), ["negative_prompt_embeds"] = zeros(2, header.Tokens, header.Width * 2) });
        Assert.Contains($"its states are {header.Width * 2} wide, but this U-Net's cross-attention takes {header.Width}",
            Message(Request(pipeline, "ecodiff", temp.File("g")) with { PromptEmbeddingsPath = wide }));

        string mismatched = temp.File("mismatched.safetensors");
        SafetensorsWriter.Write(mismatched, new Dictionary<string, Tensor> { ["prompt_embeds"] = zeros(2, header.Tokens, header.Width), ["negative_prompt_embeds"] = zeros(1, header.Tokens, header.Width) });
        Assert.Contains("negative_prompt_embeds must be a float tensor of prompt_embeds's shape", Message(Request(pipeline, "ecodiff", temp.File("h")) with { PromptEmbeddingsPath = mismatched }));

        string shortTokens = temp.File("short.safetensors");
        SafetensorsWriter.Write(shortTokens, new Dictionary<string, Tensor> { ["prompt_embeds"] = zeros(2, 3, header.Width) });
        Assert.Contains("the empty prompt encodes to", Message(Request(pipeline, "ecodiff", temp.File("i")) with { PromptEmbeddingsPath = shortTokens }));

        string misnamed = temp.File("misnamed.safetensors");
        SafetensorsWriter.Write(misnamed, new Dictionary<string, Tensor> { ["prompt_embeds"] = zeros(2, header.Tokens, header.Width) },
            new Dictionary<string, string> { ["prompts"] = "[\"only one\"]" });
        Assert.Contains("must be a JSON array of 2 strings", Message(Request(pipeline, "ecodiff", temp.File("j")) with { PromptEmbeddingsPath = misnamed }));

        foreach (string name in new[] { "a", "b", "c", "d", "e", "f", "g", "h", "i", "j" })
            Assert.False(Directory.Exists(temp.File(name)), name);
    }
}
