using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Pruning;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Jobs;
using DiffusionPrune.Training;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using DistillPage = DiffusionPrune.Studio.Components.Pages.Distill.Distill;

namespace DiffusionPrune.Studio.Tests;

/// <summary>Recovering a pruned model in the Studio: the catalog lists the Studio's outputs, the form and the job.</summary>
public sealed class DistillSessionTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly string _pruned;

    public DistillSessionTests()
    {
        _pruned = Path.Combine(_samples.Root, "out", StudioOptions.PrunedFolder);
        Context.Services.AddSingleton(new JobStateService());
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root, [_pruned]));
        Context.Services.AddSingleton(Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
    }

    /// <summary>A real, tiny 1 x 32 x 32 U-Net under the samples root, and the same pruned by magnitude into the Studio's outputs.</summary>
    private (string Teacher, string Student) TeacherAndStudent()
    {
        TorchSharp.torch.manual_seed(4);
        string teacher = Path.Combine(_samples.ModelsRoot, "tiny-unet");
        TestModels.SaveTinyUNet(teacher);
        string student = Path.Combine(_pruned, "tiny-unet-magnitude");
        PruneRunner.Run(new PruneRequest { ModelPath = teacher, Method = "magnitude", TargetParams = 0.2, OutputPath = student }, TorchSharp.torch.CPU);
        return (teacher, student);
    }

    [Fact]
    public async Task The_catalog_lists_the_studios_outputs_after_the_samples()
    {
        TeacherAndStudent();
        var models = await new FileSystemModelCatalog(_samples.Root, [_pruned]).ListModelsAsync();
        Assert.Equal(["tiny-unet", "pruned/tiny-unet-magnitude"], models.Select(m => m.Name));
        Assert.All(models, m => Assert.Null(m.Problem));
    }

    [Fact]
    public void The_form_takes_the_pruned_model_as_student_and_its_source_as_teacher_and_queues_a_distill_job()
    {
        var (teacher, student) = TeacherAndStudent();
        var page = Context.Render<DistillPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".distill-form")), WaitTimeout);
        Assert.Contains("pruned/tiny-unet-magnitude", page.Find(".student-select").InnerHtml + page.Markup);
        Assert.Contains("Estimated memory for a distillation step at batch 32", page.Find(".resource-estimate").TextContent);

        page.Find("button.start-distill").Click();
        var queue = (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        page.WaitForAssertion(() => Assert.Single(queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<DistillJob>(queue.Enqueued[0]);
        Assert.Equal(student, job.Request.StudentPath);
        Assert.Equal(teacher, job.Request.TeacherPath); // read from the student's prune report
        Assert.Equal(KnowledgeDistillation.Normalized, job.Request.Kd);
        Assert.Equal((500, 32), (job.Request.Steps, job.Request.BatchSize));
        Assert.StartsWith(Path.Combine(_samples.Root, "out", StudioOptions.DistilledFolder, "tiny-unet-magnitude-normalized-500-"), job.Request.OutputPath);
        Assert.NotNull(job.Evaluation);
    }

    [Fact]
    public async Task A_distill_job_runs_through_the_pipeline_to_a_saved_model_and_a_quick_look()
    {
        var (teacher, student) = TeacherAndStudent();
        string output = Path.Combine(_samples.Root, "out", StudioOptions.DistilledFolder, "tiny");
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);
        var job = new DistillJob(new DistillRequest { StudentPath = student, TeacherPath = teacher, OutputPath = output, Steps = 2, BatchSize = 4, Kd = KnowledgeDistillation.Plain },
            new QuickEvaluation(Samples: 8, Steps: 2));
        Assert.Equal("Distil tiny-unet-magnitude from tiny-unet (plain KD, 2 steps)", job.Name);
        await queue.EnqueueAsync(job);
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(3);
        while (state.Find(job.Id)?.IsFinished != true && DateTime.UtcNow < deadline) await Task.Delay(50);
        await queue.StopAsync(CancellationToken.None);

        var done = state.Find(job.Id)!;
        Assert.True(done.Status == JobStatus.Succeeded, done.Error);
        Assert.Contains("distilled 2 steps of 4 images (8 images, plain KD)", done.Result);
        Assert.Contains("SSIM to the teacher", done.Result);
        Assert.True(File.Exists(Path.Combine(output, ModelFolder.EvalReport)));
        using var distilled = ModelFamilies.Load(output);
        using var pruned = ModelFamilies.Load(student);
        Assert.Equal(pruned.ParameterCount(), distilled.ParameterCount());
    }

    public void Dispose() => _samples.Dispose();
}
