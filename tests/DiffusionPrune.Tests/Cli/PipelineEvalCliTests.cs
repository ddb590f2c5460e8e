using System.Text.Json.Nodes;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Tests.Pipeline;
using static DiffusionPrune.Tests.Cli.CliTests;

namespace DiffusionPrune.Tests.Cli;

/// <summary>
/// <c>dprune eval</c> on Stable Diffusion pipelines (<see cref="StableDiffusionEvaluator"/>): paired fidelity to a reference
/// pipeline from the same prompts and noise, and the cost of both; a copy of sd-pipeline-small, a pruned copy of it.
/// </summary>
public class PipelineEvalCliTests
{
    private static string Fixture => Fixtures.Diffusers("sd-pipeline-small", "pipeline");

    [Fact]
    public void A_pipeline_against_itself_is_identical_and_costs_the_same()
    {
        var report = StableDiffusionEvaluator.Evaluate(new StableDiffusionEvalRequest
        {
            ModelPath = Fixture, ReferencePath = Fixture, Prompts = ["a red cube", "a blue sphere"], ImagesPerPrompt = 2, Steps = 2,
        });
        Assert.Equal(4, report.Images);
        Assert.Equal(1.0, report.Ssim.Mean, 12);
        Assert.Equal(0.0, report.LatentRelativeMse.Worst);
        Assert.Equal(0.0, report.LatentStatisticShift);
        Assert.True(double.IsPositiveInfinity(report.Psnr.Mean));
        Assert.Equal(report.ReferenceCost.UnetParameters, report.ModelCost.UnetParameters);
        Assert.Equal(report.ReferenceCost.UnetMacs, report.ModelCost.UnetMacs);
        Assert.True(report.ModelCost.PipelineParameters > report.ModelCost.UnetParameters);
        // an infinite PSNR is written as null with a note, never as a number JSON cannot hold
        using var temp = Fixtures.Temp();
        report.Save(temp.File("r.json"));
        var json = JsonNode.Parse(File.ReadAllText(temp.File("r.json")))!.AsObject();
        Assert.Null(json["psnr_db"]!["mean"]);
        Assert.Equal(0.0, (double)json["unet_parameters_removed"]!);
    }

    [Fact]
    public void A_pruned_pipeline_is_measured_against_its_original_with_a_same_seed_grid()
    {
        using var temp = Fixtures.Temp();
        string pipeline = StableDiffusionPipelineTests.CopyPipeline(temp);
        var (code, _, stderr) = Dprune("prune", "--model", pipeline, "--method", "magnitude", "--target-params", "0.3", "--output", temp.File("pruned"));
        Assert.True(code == 0, stderr);
        File.WriteAllLines(temp.File("prompts.txt"), ["a red cube on a table", "a lighthouse by the sea", "a bowl of soup"]);

        (code, var stdout, stderr) = Dprune("eval", "--model", temp.File("pruned"), "--reference-model", pipeline, "--prompts", temp.File("prompts.txt"),
            "--steps", "3", "--seed", "4", "--output", temp.File("eval.json"));

        Assert.True(code == 0, stderr);
        Assert.Contains("SSIM to reference", stdout);
        Assert.Contains("sampled 6/6", stderr); // the pipeline stage's progress: each prompt from each pipeline
        var report = JsonNode.Parse(File.ReadAllText(temp.File("eval.json")))!.AsObject();
        Assert.Equal(6, (int)report["images"]!); // 3 prompts x 2 images, the default for pipelines
        Assert.Equal(7.5, (double)report["guidance_scale"]!);
        double ssim = (double)report["ssim"]!["mean"]!;
        Assert.InRange(ssim, 0.0, 0.999999);
        Assert.True((double)report["latent_relative_mse"]!["mean"]! > 0);
        Assert.True((double)report["latent_statistic_shift"]! > 0);
        Assert.InRange((double)report["unet_parameters_removed"]!, 0.2, 0.4);
        Assert.True((long)report["model_cost"]!["unet_macs"]! < (long)report["reference_cost"]!["unet_macs"]!);
        Assert.True((double)report["model_cost"]!["ms_per_step"]! > 0);
        // the grid: one row per image (reference | model | difference), 2 px padding
        using var image = SixLabors.ImageSharp.Image.Load(temp.File("eval.png"));
        Assert.Equal(3 * 32 + 4 * 2, image.Width);
        Assert.Equal(6 * 32 + 7 * 2, image.Height);
    }

    [Fact]
    public async Task The_pipeline_stage_reports_each_prompt_from_each_pipeline_the_grid_as_a_preview_and_finite_figures_and_pruning_drops_the_sources_evaluation()
    {
        using var temp = Fixtures.Temp();
        string original = StableDiffusionPipelineTests.CopyPipeline(temp);
        string pruned = temp.File("pruned");
        File.WriteAllText(Path.Combine(original, DiffusionPrune.Formats.ModelFolder.EvalReport), "{}"); // the original's own evaluation
        using var pipeline = new DiffusionPrune.Pipeline.DiffusionPipeline();
        await pipeline.PruneAsync(new DiffusionPrune.Pruning.PruneRequest { ModelPath = original, Method = "magnitude", TargetParams = 0.2, OutputPath = pruned });
        Assert.False(File.Exists(Path.Combine(pruned, DiffusionPrune.Formats.ModelFolder.EvalReport))); // it measured another U-Net: not passed on
        Assert.Contains(pipeline.Models, m => m.Path == pruned); // the pruned U-Net, held: the evaluation drops it and loads whole pipelines
        var progress = new List<DiffusionPrune.Pipeline.StageProgress>();

        var report = await pipeline.EvaluateStableDiffusionAsync(new StableDiffusionEvalRequest
        {
            ModelPath = pruned, ReferencePath = original, Prompts = ["a red cube", "a blue sphere"], ImagesPerPrompt = 1, Steps = 2, Seed = 7,
        }, new DiffusionPrune.Pipeline.SynchronousProgress<DiffusionPrune.Pipeline.StageProgress>(progress.Add));

        var steps = progress.Where(p => p.Stage == DiffusionPrune.Pipeline.PipelineStage.Evaluate && p.Done is not null).ToList();
        Assert.Equal([1L, 2L, 3L, 4L], steps.Select(p => p.Done!.Value));
        Assert.All(steps, p => Assert.Equal(4L, p.Total));
        var preview = Assert.Single(progress, p => p.Preview is not null).Preview!;
        Assert.Equal((3 * 128 + 4 * 2, 2 * 128 + 3 * 2), (preview.Width, preview.Height)); // 2 images x (reference, model, difference), 32 px enlarged 4 times
        var last = progress[^1];
        Assert.Equal(1.0, last.Fraction);
        Assert.All(new[] { "ssim", "psnr_db", "latent_relative_mse", "latent_statistic_shift", "ms_per_step" },
            name => Assert.True(double.IsFinite(last.Metrics![name]), $"{name} = {last.Metrics![name]}"));
        Assert.InRange(report.Ssim.Mean, -1, 1);
        Assert.DoesNotContain(pipeline.Models, m => m.Path == pruned);
        Assert.Null(report.Grid); // no file unless asked for
    }

    [Fact]
    public void A_pipeline_needs_a_reference_pipeline_and_refuses_the_options_only_models_take()
    {
        using var temp = Fixtures.Temp();
        var (code, _, stderr) = Dprune("eval", "--model", Fixture, "--steps", "2");
        Assert.Equal(2, code);
        Assert.Contains("--reference-model", stderr);

        (code, _, stderr) = Dprune("eval", "--model", Fixture, "--reference-model", Fixture, "--data", "mnist", "--steps", "2");
        Assert.Equal(2, code);
        Assert.Contains("--data is for models", stderr);

        (code, _, stderr) = Dprune("eval", "--model", Fixture, "--reference-model", Fixtures.Diffusers("unet2d-small", "model"), "--steps", "2");
        Assert.Equal(2, code);
        Assert.Contains("is not a Stable Diffusion pipeline folder", stderr);

        File.WriteAllLines(temp.File("p.txt"), ["a cat"]);
        (code, _, stderr) = Dprune("eval", "--model", Fixtures.Diffusers("unet2d-small", "model"), "--prompts", temp.File("p.txt"), "--samples", "4");
        Assert.Equal(2, code);
        Assert.Contains("--prompts is for Stable Diffusion pipelines", stderr);
    }
}
