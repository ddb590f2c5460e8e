using System.Text.Json.Nodes;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Pruning;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Export;
using DiffusionPrune.Studio.Jobs;
using Microsoft.AspNetCore.Components;
using Microsoft.Extensions.DependencyInjection;
using DistillPage = DiffusionPrune.Studio.Components.Pages.Distill.Distill;
using ExportPage = DiffusionPrune.Studio.Components.Pages.Export.Export;
using ModelPage = DiffusionPrune.Studio.Components.Pages.Models.ModelPage;

namespace DiffusionPrune.Studio.Tests;

/// <summary>
/// The Distil, Export and model pages on a pruned Stable Diffusion pipeline: a prompts box for distillation, an ONNX
/// pipeline export, an evaluation form against the original; the jobs they queue.
/// </summary>
public sealed class PipelinePagesTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly string _original;
    private readonly string _pruned;

    public PipelinePagesTests()
    {
        _original = TestPipelines.CopyTo(Path.Combine(_samples.ModelsRoot, "sd-small"));
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny-unet"));
        string prunedRoot = Path.Combine(_samples.Root, "out", StudioOptions.PrunedFolder);
        _pruned = Path.Combine(prunedRoot, "sd-small-magnitude-20");
        PruneRunner.Run(new PruneRequest { ModelPath = _original, Method = "magnitude", TargetParams = 0.2, OutputPath = _pruned }, TorchSharp.torch.CPU);
        Context.Services.AddSingleton(new JobStateService());
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root, [prunedRoot]));
        Context.Services.AddSingleton(new BundleFolders(Path.Combine(_samples.Root, "out", "exports")));
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
    }

    public void Dispose() => _samples.Dispose();

    private JobsPageTests.RecordingJobQueue Queue => (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();

    private void NavigateTo(string parameter, string value)
    {
        var navigation = Context.Services.GetRequiredService<NavigationManager>();
        navigation.NavigateTo(navigation.GetUriWithQueryParameter(parameter, value));
    }

    [Fact]
    public void The_distil_page_takes_a_pruned_pipeline_with_its_original_as_teacher_and_queues_its_prompts_and_teacher_settings()
    {
        NavigateTo("student", "pruned/sd-small-magnitude-20");
        var page = Context.Render<DistillPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".prompts-field textarea")), WaitTimeout);
        Assert.Contains("Trains without a dataset, on the teacher's own samples", page.Find(".training-data").TextContent);
        Assert.Contains("SSIM, PSNR", page.Find(".evaluate-switch").TextContent);
        Assert.Equal("4", page.Find(".batch-field input").GetAttribute("value")); // latents per step for a pipeline
        page.Find(".prompts-field textarea").Change("a red cube on a table\n\n a lighthouse by the sea \n");
        page.Find(".teacher-samples-field input").Change("2");
        page.Find(".teacher-steps-field input").Change("3");
        page.Find(".teacher-guidance-field input").Change("5");
        page.Find(".steps-field input").Change("7");
        page.WaitForAssertion(() => Assert.Contains("2 prompts x 2 latents (3 DDIM steps, guidance 5)", page.Find(".training-data").TextContent), WaitTimeout);

        page.Find("button.start-distill").Click();
        page.WaitForAssertion(() => Assert.Single(Queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<DistillJob>(Queue.Enqueued[0]);
        Assert.Equal(_pruned, job.Request.StudentPath);
        Assert.Equal(_original, job.Request.TeacherPath); // from the pruned pipeline's prune report
        Assert.Equal(["a red cube on a table", "a lighthouse by the sea"], job.Request.Prompts);
        Assert.Equal((2, 3, 5.0), (job.Request.TeacherSamplesPerPrompt, job.Request.TeacherSampleSteps, job.Request.TeacherGuidanceScale));
        Assert.Equal((7, 4), (job.Request.Steps, job.Request.BatchSize));
        Assert.NotNull(job.Evaluation);
        Assert.Null(job.Evaluation!.OnnxCache); // a pipeline's quick look runs in TorchSharp
    }

    [Fact]
    public void The_distil_page_refuses_a_model_as_a_pipelines_teacher_and_shows_no_prompts_for_a_model()
    {
        NavigateTo("student", "pruned/sd-small-magnitude-20");
        var page = Context.Render<DistillPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".prompts-field")), WaitTimeout);
        var teacher = page.FindComponents<MudBlazor.MudSelect<string>>().Single(s => s.Instance.Class?.Contains("teacher-select") == true);
        page.InvokeAsync(() => teacher.Instance.ValueChanged.InvokeAsync(Path.Combine(_samples.ModelsRoot, "tiny-unet")));
        page.WaitForAssertion(() => Assert.True(page.Find("button.start-distill").HasAttribute("disabled")), WaitTimeout);

        var student = page.FindComponents<MudBlazor.MudSelect<string>>().Single(s => s.Instance.Class?.Contains("student-select") == true);
        page.InvokeAsync(() => student.Instance.ValueChanged.InvokeAsync(Path.Combine(_samples.ModelsRoot, "tiny-unet")));
        page.WaitForAssertion(() => Assert.Empty(page.FindAll(".prompts-field")), WaitTimeout);
        Assert.Contains("MNIST training split", page.Find(".training-data").TextContent);
        Assert.Equal("32", page.Find(".batch-field input").GetAttribute("value"));
    }

    [Fact]
    public void The_export_page_exports_a_pipeline_as_an_onnx_pipeline_only()
    {
        NavigateTo("model", "pruned/sd-small-magnitude-20");
        var page = Context.Render<ExportPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".pipeline-format-note")), WaitTimeout);
        Assert.True(page.Find(".format-safetensors input").HasAttribute("disabled"));
        page.Find("button.start-export").Click();
        page.WaitForAssertion(() => Assert.Single(Queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<ExportJob>(Queue.Enqueued[0]);
        Assert.Equal(_pruned, job.Request.ModelPath);
        Assert.Equal([ExportFormat.Onnx], job.Request.Formats);
        Assert.StartsWith(Path.Combine(_samples.Root, "out", "exports", "sd-small-magnitude-20-onnx-"), job.Request.OutputPath);
        Assert.Contains("as an ONNX pipeline", job.Name);
    }

    [Fact]
    public void A_pruned_pipelines_page_evaluates_it_against_its_original_and_shows_a_recorded_evaluation_with_its_grid()
    {
        // a report as a pipeline evaluation job writes it, with its grid beside it
        string folder = ModelEvaluations.FolderOf(Path.Combine(_samples.Root, "out"), "pruned/sd-small-magnitude-20");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "eval-1.json"), new JsonObject
        {
            ["kind"] = "stable_diffusion_eval", ["model"] = "pruned/sd-small-magnitude-20", ["reference"] = "sd-small",
            ["prompts"] = new JsonArray("a cat"), ["images_per_prompt"] = 2, ["steps"] = 4, ["guidance_scale"] = 7.5, ["seed"] = 0,
            ["ssim"] = new JsonObject { ["mean"] = 0.8125, ["std"] = 0.01, ["worst"] = 0.8 },
            ["psnr_db"] = new JsonObject { ["mean"] = 21.5, ["std"] = 0.5, ["worst"] = 21.0 },
            ["latent_relative_mse"] = new JsonObject { ["mean"] = 0.1, ["std"] = 0.01, ["worst"] = 0.11 },
            ["latent_statistic_shift"] = 0.25, ["unet_parameters_removed"] = 0.2,
            ["model_cost"] = new JsonObject { ["ms_per_step"] = 10.0 }, ["reference_cost"] = new JsonObject { ["ms_per_step"] = 12.0 },
            ["grid"] = "eval-1.png",
        }.ToJsonString());
        WritePng(Path.Combine(folder, "eval-1.png"));
        // and the recipe a distillation leaves (training_args.json), shown beside the prune record
        File.WriteAllText(Path.Combine(_pruned, ModelFolder.TrainingArgs), """
            {"steps": 3, "batch_size": 2, "final_loss": 0.125, "distillation": {"kd": "normalized", "teacher": "sd-small",
             "data_free": {"prompts": ["a red cube", "a blue sky"]}}}
            """);

        var page = Context.Render<ModelPage>(p => p.Add(x => x.Name, "pruned/sd-small-magnitude-20"));
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".evaluation-table")), WaitTimeout);
        string table = page.Find(".evaluation-table").TextContent;
        Assert.Contains("0.812 ± 0.010 (worst 0.800)", table);
        Assert.Contains("21.50 dB", table);
        Assert.Contains("sd-small (\"a cat\" x 2, 4 steps", table);
        Assert.Contains("normalized KD from sd-small: 3 steps of 2 latents on the teacher's samples from 2 prompts, final loss 0.1250", table);
        Assert.StartsWith("data:image/png;base64,", page.Find("img.evaluation-grid").GetAttribute("src"));
        Assert.Equal("distill?student=pruned%2Fsd-small-magnitude-20", page.Find("a.distill-model").GetAttribute("href"));

        page.Find(".eval-prompts-field textarea").Change("a red cube\na blue sky");
        page.Find(".eval-steps-field input").Change("3");
        page.WaitForAssertion(() => Assert.False(page.Find("button.start-evaluate").HasAttribute("disabled")), WaitTimeout); // the original, by default
        page.Find("button.start-evaluate").Click();
        page.WaitForAssertion(() => Assert.Single(Queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<PipelineEvaluateJob>(Queue.Enqueued[0]);
        Assert.Equal((_pruned, _original), (job.Request.ModelPath, job.Request.ReferencePath));
        Assert.Equal(["a red cube", "a blue sky"], job.Request.Prompts);
        Assert.Equal((2, 3, 7.5), (job.Request.ImagesPerPrompt, job.Request.Steps, job.Request.GuidanceScale));
        Assert.Equal(("pruned/sd-small-magnitude-20", "sd-small"), (job.ModelName, job.ReferenceName));
        Assert.StartsWith(folder, job.ReportPath);
    }

    private static void WritePng(string path)
    {
        using var image = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24>(8, 8);
        SixLabors.ImageSharp.ImageExtensions.SaveAsPng(image, path);
    }
}
