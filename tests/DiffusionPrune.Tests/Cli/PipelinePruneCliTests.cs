using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Tests.Pipeline;
using static DiffusionPrune.Tests.Cli.CliTests;

namespace DiffusionPrune.Tests.Cli;

/// <summary><c>dprune prune</c> on a Stable Diffusion pipeline folder (a copy of sd-pipeline-small), through the real executable.</summary>
public class PipelinePruneCliTests
{
    [Fact]
    public void EcoDiff_on_a_pipeline_with_a_prompts_file_writes_a_pipeline_that_samples_from_a_prompt()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        File.WriteAllLines(temp.File("prompts.txt"), ["a red cube on a table", "", "  a lighthouse by the sea  "]);

        var (code, stdout, stderr) = Dprune("prune", "--model", pipeline, "--method", "ecodiff", "--target-params", "0.2",
            "--prompts", temp.File("prompts.txt"), "--guidance-scale", "7.5", "--steps", "2", "--iterations", "2", "--calibration", "2",
            "--ecodiff-batch", "2", "--output", temp.File("pruned"), "--json");

        Assert.True(code == 0, stderr);
        var summary = JsonNode.Parse(stdout)!.AsObject();
        Assert.Equal("ecodiff", (string?)summary["method"]);
        Assert.True((long)summary["params_after"]! < (long)summary["params_before"]!);
        Assert.Equal(["a red cube on a table", "a lighthouse by the sea"],
            summary["settings"]!["prompts"]!.AsArray().Select(p => (string)p!).ToArray());
        Assert.True(File.Exists(temp.File(Path.Combine("pruned", ModelFolder.PipelineIndex))));

        (code, _, stderr) = Dprune("sample", "--model", temp.File("pruned"), "--prompt", "a cat", "--steps", "2", "--seed", "1",
            "--output", temp.File("cat.png"));
        Assert.True(code == 0, stderr);
        Assert.True(new FileInfo(temp.File("cat.png")).Length > 0);
    }

    [Fact]
    public void Taylor_on_a_pipeline_calibrates_on_its_samples_from_the_prompts_file_and_writes_a_pipeline_that_samples()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        File.WriteAllLines(temp.File("prompts.txt"), ["a red cube on a table", "a lighthouse by the sea"]);

        var (code, stdout, stderr) = Dprune("prune", "--model", pipeline, "--method", "taylor", "--target-params", "0.2",
            "--prompts", temp.File("prompts.txt"), "--calibration", "2", "--teacher-samples", "1", "--teacher-steps", "2", "--teacher-guidance", "5",
            "--output", temp.File("pruned"), "--json");

        Assert.True(code == 0, stderr);
        var summary = JsonNode.Parse(stdout)!.AsObject();
        Assert.Equal("taylor", (string?)summary["method"]);
        Assert.True((long)summary["params_after"]! < (long)summary["params_before"]!);
        var data = summary["settings"]!["data"]!;
        Assert.Equal("teacher_samples", (string?)data["kind"]);
        Assert.Equal(1, (int)data["samples_per_prompt"]!);
        Assert.Equal(2, (int)data["sampler_steps"]!);
        Assert.Equal(5.0, (double)data["guidance_scale"]!);
        Assert.Equal(["a red cube on a table", "a lighthouse by the sea"], summary["settings"]!["prompts"]!.AsArray().Select(p => (string)p!).ToArray());

        (code, _, stderr) = Dprune("sample", "--model", temp.File("pruned"), "--prompt", "a cat", "--steps", "2", "--seed", "1",
            "--output", temp.File("cat.png"));
        Assert.True(code == 0, stderr);
        Assert.True(new FileInfo(temp.File("cat.png")).Length > 0);
    }

    [Fact]
    public void Data_for_a_pipeline_is_refused_and_nothing_is_written()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);

        var (code, _, stderr) = Dprune("prune", "--model", pipeline, "--method", "learnable-depth", "--target-params", "0.2",
            "--data", "mnist", "--output", temp.File("out"));

        Assert.Equal(2, code);
        Assert.Contains("--data is for image models", stderr);
        Assert.Contains("Leave --data out", stderr);
        Assert.False(Directory.Exists(temp.File("out")));
    }

    [Fact]
    public void EcoDiff_on_a_pipeline_calibrates_on_prompt_embeddings_saved_by_diffusers_and_writes_a_pipeline_that_samples()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        string embeddings = Fixtures.Diffusers("sd-pipeline-small", "io.safetensors"); // diffusers' prompt_embeds / negative_prompt_embeds [2, 8, 32], beside other tensors

        var (code, stdout, stderr) = Dprune("prune", "--model", pipeline, "--method", "ecodiff", "--target-params", "0.2",
            "--prompt-embeddings", embeddings, "--guidance-scale", "5", "--steps", "2", "--iterations", "2", "--calibration", "2",
            "--ecodiff-batch", "2", "--output", temp.File("pruned"), "--json");

        Assert.True(code == 0, stderr);
        var settings = JsonNode.Parse(stdout)!["settings"]!;
        Assert.Equal("embeddings", (string?)settings["prompt_source"]);
        Assert.Equal("io.safetensors", (string?)settings["prompt_embeddings"]);
        Assert.Equal(["prompt_embeds[0]", "prompt_embeds[1]"], settings["prompts"]!.AsArray().Select(p => (string)p!).ToArray());

        (code, _, stderr) = Dprune("sample", "--model", temp.File("pruned"), "--prompt", "a cat", "--steps", "2", "--seed", "1",
            "--output", temp.File("cat.png"));
        Assert.True(code == 0, stderr);
        Assert.True(new FileInfo(temp.File("cat.png")).Length > 0);

        File.WriteAllLines(temp.File("prompts.txt"), ["a cat"]);
        (code, _, stderr) = Dprune("prune", "--model", pipeline, "--method", "ecodiff", "--target-params", "0.2",
            "--prompt-embeddings", embeddings, "--prompts", temp.File("prompts.txt"), "--steps", "2", "--iterations", "2", "--calibration", "2",
            "--ecodiff-batch", "2", "--output", temp.File("both"));
        Assert.Equal(2, code);
        Assert.Contains("--prompts and --prompt-embeddings both give the calibration text; give one of them", stderr);
        Assert.False(Directory.Exists(temp.File("both")));
    }

    [Fact]
    public void Prompts_for_a_model_that_is_not_a_pipeline_are_refused_and_nothing_is_written()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllLines(temp.File("prompts.txt"), ["a cat"]);
        string model = PruneCliTests.TinyModel(temp);

        var (code, _, stderr) = Dprune("prune", "--model", model, "--method", "ecodiff", "--target-params", "0.2",
            "--prompts", temp.File("prompts.txt"), "--output", temp.File("out"));

        Assert.Equal(2, code);
        Assert.Contains("--prompts calibrates the U-Net of a Stable Diffusion pipeline", stderr);
        Assert.False(Directory.Exists(temp.File("out")));
    }
}
