using DiffusionPrune.Pipeline;
using DiffusionPrune.Pruning;
using DiffusionPrune.Studio.Jobs;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace DiffusionPrune.Studio.Tests;

/// <summary>
/// Job state under what a long-running Studio meets: figures that are NaN, a store that cannot write, two resumes of one
/// job at once, a queued job cancelled before its turn, and two jobs started in the same instant.
/// </summary>
public sealed class JobStateRobustnessTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    private string Database => Path.Combine(_samples.Root, "data", "jobs.db");

    public void Dispose() => _samples.Dispose();

    private static PruneJob Job() =>
        new(new PruneRequest { ModelPath = "/m", Method = "ecodiff", TargetParams = 0.2, OutputPath = "/o/pruned/m", Iterations = 7 });

    [Fact]
    public void Figures_that_are_not_finite_are_stored_and_read_back()
    {
        var state = new JobStateService(store: new SqliteJobStore(Database));
        var job = Job();
        state.Track(job);
        state.MarkRunning(job.Id);
        state.ReportProgress(job.Id, new JobProgress(0.5, "iteration 1",
            new Dictionary<string, double> { ["peak_rss_mb"] = double.NaN, ["loss"] = double.PositiveInfinity }, Step: 1, Stage: "prune"));
        state.MarkSucceeded(job.Id);
        Assert.Null(state.StoreProblem);

        var values = new JobStateService(store: new SqliteJobStore(Database)).Find(job.Id)!.Points.Single().Values;
        Assert.True(double.IsNaN(values["peak_rss_mb"]));
        Assert.Equal(double.PositiveInfinity, values["loss"]);
    }

    internal sealed class FailingStore : IJobStore
    {
        public int Attempts;

        public IReadOnlyList<StoredJob> LoadAll() => [];

        public void Save(JobSnapshot snapshot, string? request = null)
        {
            Interlocked.Increment(ref Attempts);
            throw new Microsoft.Data.Sqlite.SqliteException("database or disk is full", 13);
        }
    }

    [Fact]
    public void A_store_that_cannot_write_fails_no_job_and_is_reported()
    {
        var store = new FailingStore();
        var state = new JobStateService(store: store, logger: NullLogger.Instance);
        var job = Job();
        state.Track(job);
        state.MarkRunning(job.Id);
        state.ReportProgress(job.Id, new JobProgress(0.5, "half"));
        state.MarkSucceeded(job.Id);
        Assert.Equal(JobStatus.Succeeded, state.Find(job.Id)!.Status);
        Assert.True(store.Attempts >= 3);
        Assert.Contains("disk is full", state.StoreProblem);
    }

    /// <summary>A job the store says was running when the process died: interrupted after the restart.</summary>
    private (JobStateService State, Guid Id) Interrupted()
    {
        var before = new JobStateService(store: new SqliteJobStore(Database));
        var job = Job();
        before.Track(job);
        before.MarkRunning(job.Id);
        var state = new JobStateService(store: new SqliteJobStore(Database));
        Assert.Equal(JobStatus.Interrupted, state.Find(job.Id)!.Status);
        return (state, job.Id);
    }

    [Fact]
    public async Task Of_many_resumes_of_one_job_at_once_exactly_one_queues_it()
    {
        var (state, id) = Interrupted();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance); // not started: what is queued stays queued
        using var start = new ManualResetEventSlim();
        var attempts = Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
        {
            start.Wait();
            return await queue.ResumeAsync(id);
        })).ToArray();
        start.Set();
        var results = await Task.WhenAll(attempts);
        Assert.Single(results, r => r is not null);
        var job = state.Find(id)!;
        Assert.Equal(JobStatus.Queued, job.Status);
        Assert.Single(job.Lines, line => line.StartsWith("Resumed by the user", StringComparison.Ordinal));
        Assert.Null(await queue.ResumeAsync(id)); // queued now: not interrupted any more
    }

    [Fact]
    public async Task A_queued_job_cancelled_before_its_turn_is_cancelled_at_once_and_so_stored()
    {
        var state = new JobStateService(store: new SqliteJobStore(Database));
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance); // not started
        var job = Job();
        await queue.EnqueueAsync(job);
        Assert.True(queue.Cancel(job.Id));
        Assert.Equal(JobStatus.Canceled, state.Find(job.Id)!.Status);
        Assert.False(queue.Cancel(job.Id)); // finished: nothing to cancel
        Assert.Equal(JobStatus.Canceled, new JobStateService(store: new SqliteJobStore(Database)).Find(job.Id)!.Status);
    }

    [Fact]
    public async Task A_job_cancelled_while_queued_never_runs_once_the_queue_starts()
    {
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        var job = new SelfCheckJob(steps: 1, stepDelay: TimeSpan.Zero);
        await queue.EnqueueAsync(job);
        Assert.True(queue.Cancel(job.Id));
        Assert.Null(state.TryMarkRunning(job.Id)); // what a worker that dequeued it meanwhile would try
        await queue.StartAsync(CancellationToken.None);
        await Task.Delay(300);
        await queue.StopAsync(CancellationToken.None);
        var after = state.Find(job.Id)!;
        Assert.Equal(JobStatus.Canceled, after.Status);
        Assert.Null(after.StartedAt);
    }

    [Fact]
    public void Jobs_started_in_the_same_instant_get_different_output_folders()
    {
        string parent = Path.Combine(_samples.Root, "out", "pruned");
        var names = Enumerable.Range(0, 50).AsParallel().Select(_ => OutputNames.NewFolder(parent, "tiny/unet-magnitude-20")).ToArray();
        Assert.Equal(names.Length, names.Distinct().Count());
        Assert.All(names, name => Assert.StartsWith(Path.Combine(parent, "tiny-unet-magnitude-20-"), name));
    }
}

/// <summary>The Jobs page says when jobs are not being saved.</summary>
public sealed class StoreProblemPageTests : MudTestContext
{
    [Fact]
    public void The_jobs_page_warns_that_jobs_are_not_saved()
    {
        var state = new JobStateService(store: new JobStateRobustnessTests.FailingStore(), logger: NullLogger.Instance);
        Context.Services.AddSingleton(state);
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.Jobs.Jobs>();
        Assert.Empty(page.FindAll(".store-problem"));

        page.Find("button.run-self-check").Click(); // its first write fails
        page.WaitForAssertion(() => Assert.Contains("disk is full", page.Find(".store-problem").TextContent), WaitTimeout);
    }
}
