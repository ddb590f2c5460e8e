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
