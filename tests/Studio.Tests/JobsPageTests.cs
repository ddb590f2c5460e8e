using DiffusionPrune.Studio.Jobs;
using Microsoft.Extensions.DependencyInjection;
using JobsPage = DiffusionPrune.Studio.Components.Pages.Jobs.Jobs;

namespace DiffusionPrune.Studio.Tests;

public sealed class JobsPageTests : MudTestContext
{
    private readonly JobStateService _state = new();

    public JobsPageTests()
    {
        Context.Services.AddSingleton(_state);
        Context.Services.AddSingleton<IJobQueue, RecordingJobQueue>();
    }

    [Fact]
    public async Task Shows_progress_changing_as_the_state_service_reports_updates()
    {
        var job = new SelfCheckJob();
        _state.Track(job);
        var page = Context.Render<JobsPage>();
        Assert.Contains("Queued", page.Find(".jobs-table tbody tr").TextContent);

        // Updates arrive from another thread, as they do from the background queue.
        await Task.Run(() =>
        {
            _state.MarkRunning(job.Id);
            _state.ReportProgress(job.Id, new JobProgress(0.4, "Step 2 of 5"));
        });
        await page.WaitForAssertionAsync(() =>
        {
            var row = page.Find(".jobs-table tbody tr").TextContent;
            Assert.Contains("Running", row);
            Assert.Contains("40 %", row);
            Assert.Contains("Step 2 of 5", row);
        });

        await Task.Run(() => _state.MarkSucceeded(job.Id));
        await page.WaitForAssertionAsync(() =>
        {
            var row = page.Find(".jobs-table tbody tr").TextContent;
            Assert.Contains("Succeeded", row);
            Assert.Contains("100 %", row);
        });
    }

    [Fact]
    public void Run_self_check_button_enqueues_a_self_check_job()
    {
        var page = Context.Render<JobsPage>();
        Assert.NotNull(page.Find(".no-jobs"));

        page.Find("button.run-self-check").Click();

        var queue = (RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        Assert.IsType<SelfCheckJob>(Assert.Single(queue.Enqueued));
        page.WaitForAssertion(() => Assert.Contains("Self-check", page.Find(".jobs-table tbody tr").TextContent), WaitTimeout);
    }

    [Fact]
    public async Task Subscribes_while_shown_and_unsubscribes_when_disposed()
    {
        Context.Render<JobsPage>();
        Assert.Equal(1, _state.SubscriberCount);

        await Context.DisposeComponentsAsync();

        Assert.Equal(0, _state.SubscriberCount);
    }

    // Tracks jobs like the real queue but never runs them, so the page test controls every update.
    internal sealed class RecordingJobQueue(JobStateService state) : IJobQueue
    {
        public List<StudioJob> Enqueued { get; } = [];
        public List<Guid> Cancelled { get; } = [];

        public bool Cancel(Guid id)
        {
            Cancelled.Add(id);
            return true;
        }

        public ValueTask<JobSnapshot> EnqueueAsync(StudioJob job, CancellationToken cancellationToken = default)
        {
            Enqueued.Add(job);
            return ValueTask.FromResult(state.Track(job));
        }

        public List<Guid> Resumed { get; } = [];

        public ValueTask<JobSnapshot?> ResumeAsync(Guid id, CancellationToken cancellationToken = default)
        {
            Resumed.Add(id);
            return ValueTask.FromResult<JobSnapshot?>(null);
        }
    }
}
