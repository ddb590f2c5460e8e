using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline.StableDiffusion;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pipeline;

/// <summary>
/// StableDiffusionPipeline against sd-pipeline-small, whose references diffusers' StableDiffusionPipeline loop computed:
/// io.safetensors from given prompt embeddings (10 guided DDIM steps at scale 5), e2e.safetensors from the prompts'
/// token ids (scale 7.5, negative prompt ""). Loading refusals on edited copies of the fixture folder.
/// </summary>
public class StableDiffusionPipelineTests(ITestOutputHelper testOutput)
{
    private static string PipelineFolder => Fixtures.Diffusers("sd-pipeline-small", "pipeline");

    /// <summary>The fixture tolerance for a 10-step run (README): max |ours - diffusers| &lt;= 1e-3 * max(1, max |diffusers|).</summary>
    private const double TrajectoryTolerance = 1e-3;

    private static JsonObject Case() => JsonNode.Parse(File.ReadAllText(Fixtures.Diffusers("sd-pipeline-small", "case.json")))!.AsObject();

    [Fact]
    public void Ten_guided_ddim_steps_from_given_prompt_embeddings_match_diffusers_trajectory_and_image()
    {
        var testCase = Case();
        int steps = testCase["steps"]!.GetValue<int>();
        double guidance = testCase["guidance_scale"]!.GetValue<double>();
        using var pipeline = StableDiffusionPipeline.Load(PipelineFolder);
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("sd-pipeline-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        using var embeddings = new PromptEmbeddings(io.ReadFloat("prompt_embeds"), io.ReadFloat("negative_prompt_embeds"));

        using var output = pipeline.Generate(embeddings, io.ReadFloat("noise"), new SampleOptions(steps, guidance, KeepTrajectory: true));

        Assert.Equal(io.Read("timesteps").data<long>().ToArray(), output.Timesteps);
        var trajectory = io.ReadFloat("trajectory");
        Assert.Equal(trajectory.shape, output.Trajectory!.shape);
        AssertClose(output.Trajectory, trajectory, TrajectoryTolerance, "trajectory");
        AssertClose(output.Latents, io.ReadFloat("final_latents"), TrajectoryTolerance, "final_latents");
        AssertClose(output.Image, io.ReadFloat("image"), TrajectoryTolerance, "image");
        AssertClose(output.Image01, io.ReadFloat("image01"), TrajectoryTolerance, "image01");
    }

    [Fact]
    public void The_tokenizer_gives_the_fixture_input_ids_for_the_prompts_and_the_empty_negative_prompt()
    {
        var e2e = Case()["e2e"]!;
        string[] prompts = e2e["prompts"]!.AsArray().Select(p => p!.GetValue<string>()).ToArray();
        string negative = e2e["negative_prompt"]!.GetValue<string>();
        using var pipeline = StableDiffusionPipeline.Load(PipelineFolder);
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("sd-pipeline-small", "e2e.safetensors"));
        using var scope = NewDisposeScope();

        var ids = pipeline.TokenIds(prompts);
        var negativeIds = pipeline.TokenIds(prompts.Select(_ => negative).ToArray());

        Assert.Equal(io.Read("input_ids").data<long>().ToArray(), ids.data<long>().ToArray());
        Assert.Equal(io.Read("negative_input_ids").data<long>().ToArray(), negativeIds.data<long>().ToArray());
    }

    [Fact]
    public void Prompt_text_to_image_matches_diffusers_end_to_end()
    {
        var e2e = Case()["e2e"]!;
        string[] prompts = e2e["prompts"]!.AsArray().Select(p => p!.GetValue<string>()).ToArray();
        string negative = e2e["negative_prompt"]!.GetValue<string>();
        var options = new SampleOptions(e2e["steps"]!.GetValue<int>(), e2e["guidance_scale"]!.GetValue<double>());
        using var pipeline = StableDiffusionPipeline.Load(PipelineFolder);
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("sd-pipeline-small", "e2e.safetensors"));
        using var scope = NewDisposeScope();

        using var embeddings = pipeline.EncodePrompt(prompts, [negative]);
        using var output = pipeline.Generate(embeddings, io.ReadFloat("noise"), options);

        AssertClose(output.Latents, io.ReadFloat("final_latents"), TrajectoryTolerance, "final_latents");
        AssertClose(output.Image, io.ReadFloat("image"), TrajectoryTolerance, "image");
        AssertClose(output.Image01, io.ReadFloat("image01"), TrajectoryTolerance, "image01");
    }

    [Fact]
    public void Encoding_the_fixture_prompt_ids_gives_the_same_states_as_encoding_the_prompt_text()
    {
        string[] prompts = Case()["e2e"]!["prompts"]!.AsArray().Select(p => p!.GetValue<string>()).ToArray();
        using var pipeline = StableDiffusionPipeline.Load(PipelineFolder);
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("sd-pipeline-small", "e2e.safetensors"));
        using var scope = NewDisposeScope();

        var fromIds = pipeline.EncodeIds(io.Read("input_ids"));
        var fromText = pipeline.EncodeText(prompts);

        Assert.Equal(new long[] { prompts.Length, 77, pipeline.TextEncoder.Config.HiddenSize }, fromText.shape);
        Assert.True(Identical(fromIds, fromText));
    }

    [Fact]
    public void Several_images_per_prompt_repeat_each_prompts_states_in_prompt_order()
    {
        using var pipeline = StableDiffusionPipeline.Load(PipelineFolder);
        using var scope = NewDisposeScope();

        using var embeddings = pipeline.EncodePrompt(["a red cube", "a blue sphere"], ["blurry"], imagesPerPrompt: 2);
        var single = pipeline.EncodeText(["a red cube", "a blue sphere"]);
        var blurry = pipeline.EncodeText(["blurry"]);

        Assert.Equal(4, embeddings.PromptEmbeds.shape[0]);
        Assert.True(Identical(embeddings.PromptEmbeds, single.repeat_interleave(2, 0)));
        Assert.True(Identical(embeddings.NegativePromptEmbeds!, blurry.expand(4, -1, -1)));
    }

    [Fact]
    public void A_guidance_scale_of_one_runs_the_prompt_branch_alone_and_ignores_the_negative_states()
    {
        using var pipeline = StableDiffusionPipeline.Load(PipelineFolder);
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("sd-pipeline-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        var prompt = io.ReadFloat("prompt_embeds");
        var noise = io.ReadFloat("noise");
        var batches = new List<long>();
        pipeline.Unet.FeatureTap = (block, x) => { if (block == "mid_block") batches.Add(x.shape[0]); };

        using var withoutNegative = pipeline.Generate(new PromptEmbeddings(prompt, null), noise, new SampleOptions(2, 1.0));
        using var withNegative = pipeline.Generate(new PromptEmbeddings(prompt, randn_like(prompt)), noise, new SampleOptions(2, 1.0));
        using var guided = pipeline.Generate(new PromptEmbeddings(prompt, randn_like(prompt)), noise, new SampleOptions(2, 3.0));

        Assert.True(Identical(withoutNegative.Image, withNegative.Image));
        Assert.False(Identical(withoutNegative.Image, guided.Image));
        // Two steps each: batch 2 without guidance, the doubled batch of 4 with it.
        Assert.Equal(new long[] { 2, 2, 2, 2, 4, 4 }, batches);
    }

    [Fact]
    public void The_same_seed_gives_the_same_image_and_another_seed_another()
    {
        using var pipeline = StableDiffusionPipeline.Load(PipelineFolder, schedulerName: "euler-a");
        var options = new SampleOptions(2, 7.5);

        using var first = pipeline.Generate("a photograph of an astronaut riding a horse", null, 2, seed: 5, options);
        using var again = pipeline.Generate("a photograph of an astronaut riding a horse", null, 2, seed: 5, options);
        using var other = pipeline.Generate("a photograph of an astronaut riding a horse", null, 2, seed: 6, options);

        Assert.Equal(new long[] { 2, 3, 32, 32 }, first.Image.shape);
        Assert.True(Identical(first.Image, again.Image));
        Assert.False(Identical(first.Image, other.Image));
    }

    [Theory]
    [InlineData("ddim")]
    [InlineData("pndm")]
    [InlineData("euler")]
    [InlineData("euler-a")]
    [InlineData("dpm++2m")]
    public void Every_scheduler_name_the_cli_accepts_generates_a_finite_image(string scheduler)
    {
        using var pipeline = StableDiffusionPipeline.Load(PipelineFolder, schedulerName: scheduler);
        using var output = pipeline.Generate("a red cube", "", 1, seed: 1, new SampleOptions(3, 7.5));

        Assert.Equal(new long[] { 1, 3, 32, 32 }, output.Image.shape);
        Assert.True(output.Image.isfinite().all().item<bool>());
        Assert.InRange(output.Image01.min().item<float>(), 0f, 1f);
        Assert.InRange(output.Image01.max().item<float>(), 0f, 1f);
    }

    [Fact]
    public void A_folder_without_a_vae_entry_is_refused_naming_the_component()
    {
        using var temp = Fixtures.Temp();
        string folder = CopyPipeline(temp, index => index.Remove("vae"));

        var e = Assert.Throws<ModelFormatException>(() => StableDiffusionPipeline.Load(folder));
        Assert.Contains("\"vae\"", e.Message);
    }

    [Fact]
    public void A_missing_component_subfolder_is_refused_naming_it()
    {
        using var temp = Fixtures.Temp();
        string folder = CopyPipeline(temp);
        Directory.Delete(Path.Combine(folder, "text_encoder"), recursive: true);

        var e = Assert.Throws<ModelFormatException>(() => StableDiffusionPipeline.Load(folder));
        Assert.Contains("text_encoder/", e.Message);
    }

    [Fact]
    public void A_component_listed_as_null_is_refused_as_missing()
    {
        using var temp = Fixtures.Temp();
        string folder = CopyPipeline(temp, index => index["unet"] = new JsonArray(null, null));

        var e = Assert.Throws<ModelFormatException>(() => StableDiffusionPipeline.Load(folder));
        Assert.Contains("\"unet\"", e.Message);
    }

    [Fact]
    public void Another_pipeline_class_is_refused_by_name()
    {
        using var temp = Fixtures.Temp();
        string folder = CopyPipeline(temp, index => index["_class_name"] = "StableDiffusionXLPipeline");

        var e = Assert.Throws<NotSupportedException>(() => StableDiffusionPipeline.Load(folder));
        Assert.Contains("StableDiffusionXLPipeline", e.Message);
    }

    [Fact]
    public void A_component_of_the_wrong_class_is_refused_naming_the_class_expected()
    {
        using var temp = Fixtures.Temp();
        string folder = CopyPipeline(temp, index => index["text_encoder"] = new JsonArray("transformers", "CLIPTextModelWithProjection"));

        var e = Assert.Throws<NotSupportedException>(() => StableDiffusionPipeline.Load(folder));
        Assert.Contains("CLIPTextModelWithProjection", e.Message);
        Assert.Contains("CLIPTextModel", e.Message.Replace("CLIPTextModelWithProjection", ""));
    }

    [Fact]
    public void CheckFolder_refuses_what_Load_refuses_before_weights_by_name_and_reads_no_weights()
    {
        using var temp = Fixtures.Temp();
        string good = CopyPipeline(temp);
        Assert.Empty(StableDiffusionPipeline.CheckFolder(good));
        // it reads model_index.json and the subfolders' presence only: missing weights are Load's to find
        File.Delete(Path.Combine(good, "unet", "diffusion_pytorch_model.safetensors"));
        Assert.Empty(StableDiffusionPipeline.CheckFolder(good));
        Assert.ThrowsAny<Exception>(() => StableDiffusionPipeline.Load(good));

        using var other = Fixtures.Temp();
        string xl = CopyPipeline(other, index => index["_class_name"] = "StableDiffusionXLPipeline");
        Assert.Contains("StableDiffusionXLPipeline", Assert.Throws<NotSupportedException>(() => StableDiffusionPipeline.CheckFolder(xl)).Message);
        using var third = Fixtures.Temp();
        string noVae = CopyPipeline(third);
        Directory.Delete(Path.Combine(noVae, "vae"), recursive: true);
        Assert.Contains("vae/", Assert.Throws<ModelFormatException>(() => StableDiffusionPipeline.CheckFolder(noVae)).Message);
        using var fourth = Fixtures.Temp();
        string withChecker = CopyPipeline(fourth, index => index["safety_checker"] = new JsonArray("stable_diffusion", "StableDiffusionSafetyChecker"));
        Assert.Contains(StableDiffusionPipeline.CheckFolder(withChecker), note => note.Contains("safety_checker", StringComparison.Ordinal));
    }

    [Fact]
    public void An_unsupported_scheduler_class_is_refused_naming_the_supported_ones()
    {
        using var temp = Fixtures.Temp();
        string folder = CopyPipeline(temp, index => index["scheduler"] = new JsonArray("diffusers", "LMSDiscreteScheduler"));

        var e = Assert.Throws<NotSupportedException>(() => StableDiffusionPipeline.Load(folder));
        Assert.Contains("LMSDiscreteScheduler", e.Message);
        Assert.Contains("euler-a", e.Message);
    }

    [Fact]
    public void A_present_safety_checker_is_left_unloaded_with_a_note()
    {
        using var temp = Fixtures.Temp();
        string folder = CopyPipeline(temp, index =>
        {
            index["safety_checker"] = new JsonArray("stable_diffusion", "StableDiffusionSafetyChecker");
            index["feature_extractor"] = new JsonArray("transformers", "CLIPImageProcessor");
        });

        using var pipeline = StableDiffusionPipeline.Load(folder);
        Assert.Contains(pipeline.Notes, n => n.StartsWith("safety_checker (StableDiffusionSafetyChecker)", StringComparison.Ordinal));
        Assert.Contains(pipeline.Notes, n => n.StartsWith("feature_extractor (CLIPImageProcessor)", StringComparison.Ordinal));
        using var plain = StableDiffusionPipeline.Load(PipelineFolder);
        Assert.Empty(plain.Notes);
    }

    [Fact]
    public void Only_folders_with_a_stable_diffusion_index_count_as_stable_diffusion()
    {
        Assert.True(StableDiffusionPipeline.IsStableDiffusionFolder(PipelineFolder));
        Assert.False(StableDiffusionPipeline.IsStableDiffusionFolder(Fixtures.Diffusers("unet2d-small", "model")));
        Assert.False(StableDiffusionPipeline.IsStableDiffusionFolder(Path.Combine(PipelineFolder, "no-such-folder")));
    }

    /// <summary>A copy of the fixture pipeline in <paramref name="temp"/>, its model_index.json edited by <paramref name="edit"/>.</summary>
    internal static string CopyPipeline(TempFolder temp, Action<JsonObject>? edit = null)
    {
        string target = temp.File("pipeline");
        foreach (var file in Directory.EnumerateFiles(PipelineFolder, "*", SearchOption.AllDirectories))
        {
            string destination = Path.Combine(target, Path.GetRelativePath(PipelineFolder, file));
            Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
            File.Copy(file, destination);
        }
        if (edit is not null)
        {
            string indexPath = Path.Combine(target, ModelFolder.PipelineIndex);
            var index = JsonNode.Parse(File.ReadAllText(indexPath))!.AsObject();
            edit(index);
            File.WriteAllText(indexPath, index.ToJsonString());
        }
        return target;
    }

    private static bool Identical(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private void AssertClose(Tensor actual, Tensor expected, double tolerance, string name)
    {
        Assert.Equal(expected.shape, actual.shape);
        double error = Fixtures.RelativeError(actual, expected);
        testOutput.WriteLine($"{name}: max relative error {error:G3}");
        Assert.True(error <= tolerance, $"{name}: max relative error {error:G3} exceeds {tolerance:G3}");
    }
}
