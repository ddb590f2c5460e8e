using DiffusionPrune.Formats;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pruning;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Jobs;
using DiffusionPrune.Studio.Prune;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using JobDetailPage = DiffusionPrune.Studio.Components.Pages.Jobs.JobDetail;
using PrunePage = DiffusionPrune.Studio.Components.Pages.Prune.Prune;

namespace DiffusionPrune.Studio.Tests;

/// <summary>A compression session in the Studio: the prune form, the job it starts, and the job's page.</summary>
public sealed class PruneSessionTests : MudTestContext, IDisposable
{
    private readonly JobStateService _state = new();
    private readonly TempSamplesFolder _samples = new();

    public PruneSessionTests()
    {
        Context.Services.AddSingleton(_state);
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
        Context.Services.AddSingleton(Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
        Context.Services.AddSingleton<PruneEstimates>();
    }

    /// <summary>A real, tiny 1 x 32 x 32 U-Net with a scheduler config, under the samples root.</summary>
    private string TinyModel(string name = "tiny-unet")
    {
        string folder = Path.Combine(_samples.ModelsRoot, name);
        TestModels.SaveTinyUNet(folder);
        return folder;
    }

    [Fact]
    public void The_form_lists_models_and_every_method_and_start_queues_a_prune_job_with_its_settings()
    {
        string model = TinyModel();
        _samples.AddModel("broken", "{ not json", 10); // listed by the catalog with a problem: not offered
        var page = Context.Render<PrunePage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".prune-form")), WaitTimeout);

        // EcoDiff shows its own settings; magnitude (the default choice) does not.
        Assert.Empty(page.FindAll(".iterations-field"));
        Assert.Contains("magnitude", page.Find(".method-description").TextContent.ToLowerInvariant() + page.Markup);
        // the memory the run needs, from the config alone, before it starts
        Assert.Contains("Estimated memory for pruning with magnitude", page.Find(".resource-estimate").TextContent);

        page.Find("button.start-prune").Click();
        var queue = (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        page.WaitForAssertion(() => Assert.Single(queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<PruneJob>(queue.Enqueued[0]);
        Assert.Equal(model, job.Request.ModelPath);
        Assert.Equal("magnitude", job.Request.Method);
        Assert.Equal(0.2, job.Request.TargetParams);
        Assert.StartsWith(Path.Combine(_samples.Root, "out", "pruned", "tiny-unet-magnitude-20-"), job.Request.OutputPath);
        Assert.NotNull(job.Evaluation);
        Assert.EndsWith($"jobs/{job.Id}", Context.Services.GetRequiredService<Microsoft.AspNetCore.Components.NavigationManager>().Uri);
    }

    [Fact]
    public void Before_start_the_page_shows_the_time_from_passes_timed_on_this_machine_and_re_prices_when_a_setting_changes()
    {
        TinyModel();
        var page = Context.Render<PrunePage>();
        page.WaitForAssertion(() => Assert.Contains("quick look", page.Find(".time-estimate b").TextContent), WaitTimeout);
        Assert.Matches(@"^Estimated time: about [\d\w ]+ \(pruning [\d\w ]+, quick look [\d\w ]+\)\.$", page.Find(".time-estimate b").TextContent);
        string text = page.Find(".time-details").TextContent;
        Assert.Contains("the method reads weights only, no network pass", text); // magnitude, the default
        Assert.Matches(@"64 images x 10 steps from the pruned model and the original \(\d+\.\d ms per step at batch 64", text);

        page.Find(".quick-look-switch input").Change(false);
        page.WaitForAssertion(() => Assert.DoesNotContain("quick look", page.Find(".time-estimate").TextContent), WaitTimeout);
        Assert.Equal(1, Context.Services.GetRequiredService<PruneEstimates>().Measurements); // the one pass at batch 64, for the quick look
    }

    [Fact]
    public async Task The_estimate_reuses_a_models_pass_times_and_grows_with_the_work()
    {
        string model = TinyModel();
        var estimates = Context.Services.GetRequiredService<PruneEstimates>();
        var request = new PruneRequest { ModelPath = model, Method = "ecodiff", TargetParams = 0.2, Steps = 4, Iterations = 10, Calibration = 8 };
        var small = await estimates.EstimateAsync(request, null);
        Assert.Equal(1, estimates.Measurements); // one batch size, with and without a backward in one measurement
        var large = await estimates.EstimateAsync(request with { Iterations = 100 }, null);
        Assert.Equal(1, estimates.Measurements);
        Assert.Equal(1, estimates.ModelLoads); // a setting change prices the same loaded model
        Assert.True(large.Total > small.Total);
        Assert.Null(large.QuickLook);
        Assert.Contains("400 forward+backward (to the activations) at batch 4", large.Describe());
        Assert.Contains("408 forward passes at batch 4", large.Describe()); // 2 target batches and 100 trajectories of 4 steps
        var withLook = await estimates.EstimateAsync(request, new QuickEvaluation());
        Assert.Equal(2, estimates.Measurements);
        Assert.Equal(small.Prune.Total + withLook.QuickLook, withLook.Total);
    }

    [Fact]
    public void A_target_outside_zero_to_one_is_refused_in_place()
    {
        TinyModel();
        var page = Context.Render<PrunePage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".target-field input")), WaitTimeout);
        page.Find(".target-field input").Change("1.5");
        page.WaitForAssertion(() => Assert.Contains("strictly between 0 and 1", page.Markup), WaitTimeout);
        page.Find("button.start-prune").Click();
        Assert.Empty(((JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>()).Enqueued);
    }

    [Fact]
    public async Task The_job_page_draws_the_figures_shows_the_preview_and_log_and_cancels()
    {
        var job = new PruneJob(new PruneRequest { ModelPath = "m", Method = "ecodiff", TargetParams = 0.2, OutputPath = "o" });
        _state.Track(job);
        _state.MarkRunning(job.Id);
        var page = Context.Render<JobDetailPage>(p => p.Add(x => x.Id, job.Id));
        Assert.Contains("Prune m with ecodiff to remove 20%", page.Find(".job-name").TextContent);

        using var grid = TorchSharp.torch.zeros(4, 1, 8, 8);
        var (png, width, height) = DiffusionPrune.Imaging.ImageGrid.Png(grid);
        await Task.Run(() =>
        {
            _state.ReportProgress(job.Id, new JobProgress(0, "scoring 12 unit groups with ecodiff", Note: true, Stage: "prune"));
            for (int i = 1; i <= 3; i++)
                _state.ReportProgress(job.Id, new JobProgress(i / 10.0, $"Prune {i}/10: loss 0.{i}", new Dictionary<string, double>
                {
                    ["loss"] = 0.1 * i, ["expected_kept_fraction"] = 1 - 0.01 * i, ["eta_seconds"] = 70, ["peak_rss_bytes"] = 300 << 20,
                }, Step: i, Stage: "prune"));
            _state.ReportProgress(job.Id, new JobProgress(0.3, "first samples", Preview: new PreviewImage(png, width, height, "first 4 samples"), Note: true));
        });
        await page.WaitForAssertionAsync(() =>
        {
            Assert.Contains("30 %", page.Find(".job-percent").TextContent);
            Assert.Contains("Prune 3/10: loss 0.3", page.Find(".job-message").TextContent);
            Assert.Contains("00:01:10 left", page.Find(".job-message").TextContent);
            Assert.StartsWith("data:image/png;base64,", page.Find(".job-chart img").GetAttribute("src"));
            Assert.Contains("300 MB", page.Find(".job-chart").TextContent);
            Assert.StartsWith("data:image/png;base64,", page.Find(".job-preview img").GetAttribute("src"));
            Assert.Contains("scoring 12 unit groups", page.Find(".job-log").TextContent);
        }, WaitTimeout);
        Assert.Equal(3, _state.Find(job.Id)!.Points.Count);

        page.Find("button.cancel-job").Click();
        Assert.Equal([job.Id], ((JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>()).Cancelled);

        var unknown = Context.Render<JobDetailPage>(p => p.Add(x => x.Id, Guid.NewGuid()));
        Assert.NotNull(unknown.Find(".unknown-job"));
    }

    [Fact]
    public async Task A_prune_job_runs_through_the_pipeline_to_a_saved_model_and_a_quick_look()
    {
        string model = TinyModel();
        string output = Path.Combine(_samples.Root, "out", "pruned", "tiny");
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);
        var job = new PruneJob(new PruneRequest { ModelPath = model, Method = "magnitude", TargetParams = 0.3, OutputPath = output },
            new QuickEvaluation(Samples: 8, Steps: 2));
        await queue.EnqueueAsync(job);
        await WaitUntilAsync(() => state.Find(job.Id)?.IsFinished == true, TimeSpan.FromMinutes(3));
        await queue.StopAsync(CancellationToken.None);

        var done = state.Find(job.Id)!;
        Assert.True(done.Status == JobStatus.Succeeded, done.Error);
        Assert.Contains("magnitude: removed", done.Result);
        Assert.Contains("FID-proxy", done.Result);
        Assert.NotNull(done.Preview); // the quick look's first samples
        Assert.True(File.Exists(Path.Combine(output, ModelFolder.PruneReport)));
        Assert.True(File.Exists(Path.Combine(output, ModelFolder.EvalReport)));
        Assert.Contains(done.Lines, line => line.StartsWith("scoring", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_layer_prune_job_reports_the_removed_layers_and_the_additivity_check()
    {
        string model = TinyModel();
        string output = Path.Combine(_samples.Root, "out", "pruned", "tiny-laptop");
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);
        var job = new PruneJob(new PruneRequest
        {
            ModelPath = model, Method = "laptop", TargetParams = 0.05, OutputPath = output, Steps = 2, Calibration = 2,
            Budget = DiffusionPrune.Pruning.Layers.LayerBudget.Macs,
        });
        Assert.EndsWith("with laptop to remove 5% of the macs", job.Name, StringComparison.Ordinal);
        await queue.EnqueueAsync(job);
        await WaitUntilAsync(() => state.Find(job.Id)?.IsFinished == true, TimeSpan.FromMinutes(3));
        await queue.StopAsync(CancellationToken.None);

        var done = state.Find(job.Id)!;
        Assert.True(done.Status == JobStatus.Succeeded, done.Error);
        Assert.Matches(@"Removed \d+ layers? \(knapsack, \d+\.\d % of the MACs\)", done.Result);
        Assert.Contains("Additivity over", done.Result, StringComparison.Ordinal);
        Assert.Contains(done.Lines, line => line.StartsWith("laptop: additivity Pearson r", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Cancelling_a_running_ecodiff_job_stops_it_and_leaves_no_output_folder()
    {
        string model = TinyModel();
        string output = Path.Combine(_samples.Root, "out", "pruned", "cancelled");
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);
        var job = new PruneJob(new PruneRequest
        {
            ModelPath = model, Method = "ecodiff", TargetParams = 0.1, Iterations = 500, Steps = 2, Calibration = 2, OutputPath = output,
        });
        var waiting = await queue.EnqueueAsync(new SelfCheckJob(steps: 1, stepDelay: TimeSpan.Zero));
        await queue.EnqueueAsync(job);
        var never = await queue.EnqueueAsync(new SelfCheckJob(steps: 1, stepDelay: TimeSpan.Zero));
        Assert.True(queue.Cancel(never.Id)); // queued: it never starts
        await WaitUntilAsync(() => state.Find(job.Id)?.Points.Count >= 2, TimeSpan.FromMinutes(2));
        Assert.True(queue.Cancel(job.Id));
        await WaitUntilAsync(() => state.Find(job.Id)?.IsFinished == true && state.Find(never.Id)?.IsFinished == true, TimeSpan.FromMinutes(1));
        await queue.StopAsync(CancellationToken.None);

        var cancelled = state.Find(job.Id)!;
        Assert.Equal(JobStatus.Canceled, cancelled.Status);
        Assert.Contains("by the user", cancelled.Message);
        Assert.True(cancelled.Points.Count < 500);
        Assert.False(Directory.Exists(output));
        Assert.Equal(JobStatus.Canceled, state.Find(never.Id)!.Status);
        Assert.Null(state.Find(never.Id)!.StartedAt);
        Assert.Equal(JobStatus.Succeeded, state.Find(waiting.Id)!.Status);
        Assert.False(queue.Cancel(job.Id)); // finished: nothing to cancel
    }

    private static async Task WaitUntilAsync(Func<bool> condition, TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        while (!condition())
            await Task.Delay(20, cancel.Token);
    }

    public void Dispose() => _samples.Dispose();
}

/// <summary>Tests that set the process-wide memory limit run alone (after the parallel collections).</summary>
[CollectionDefinition(nameof(MemoryLimitCollection), DisableParallelization = true)]
public sealed class MemoryLimitCollection;

/// <summary>The prune form against a memory limit the run does not fit.</summary>
[Collection(nameof(MemoryLimitCollection))]
public sealed class PruneEstimateLimitTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public PruneEstimateLimitTests()
    {
        Context.Services.AddSingleton(new JobStateService());
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
        Context.Services.AddSingleton(Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
        Context.Services.AddSingleton<PruneEstimates>();
    }

    [Fact]
    public void A_run_over_the_memory_limit_is_shown_as_an_error_and_cannot_start()
    {
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny-unet"), scheduler: false);
        var before = DiffusionPrune.Runtime.MemoryLimit.Override;
        DiffusionPrune.Runtime.MemoryLimit.Override = 1024;
        try
        {
            var page = Context.Render<PrunePage>();
            page.WaitForAssertion(() => Assert.NotNull(page.Find(".resource-estimate")), WaitTimeout);
            var alert = page.Find(".resource-estimate");
            Assert.Contains("would not fit", alert.TextContent);
            Assert.Contains("limit 1.00 KiB (--max-memory)", alert.TextContent);
            Assert.Contains("mud-alert-text-error", alert.OuterHtml);
            Assert.True(page.Find("button.start-prune").HasAttribute("disabled"));
        }
        finally
        {
            DiffusionPrune.Runtime.MemoryLimit.Override = before;
        }
    }

    public void Dispose() => _samples.Dispose();
}
