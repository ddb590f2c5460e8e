using DiffusionPrune.Studio.Jobs;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging.Abstractions;

namespace DiffusionPrune.Studio.Tests;

public sealed class ChannelJobQueueTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Runs_an_enqueued_self_check_job_to_completion_reporting_each_step()
    {
        var state = new JobStateService();
        var progressSeen = new List<double>();
        var finished = new TaskCompletionSource<JobSnapshot>(TaskCreationOptions.RunContinuationsAsynchronously);
        var job = new SelfCheckJob(steps: 4, stepDelay: TimeSpan.FromMilliseconds(10));
        state.Changed += () =>
        {
            if (state.Find(job.Id) is not { } snapshot) return;
            lock (progressSeen) progressSeen.Add(snapshot.Progress);
            if (snapshot.IsFinished) finished.TrySetResult(snapshot);
        };
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);

        var queued = await queue.EnqueueAsync(job);
        var done = await finished.Task.WaitAsync(Timeout);
        await queue.StopAsync(CancellationToken.None);

        Assert.Equal(JobStatus.Queued, queued.Status);
        Assert.Equal(JobStatus.Succeeded, done.Status);
        Assert.Equal(1.0, done.Progress);
        Assert.NotNull(done.StartedAt);
        Assert.NotNull(done.FinishedAt);
        lock (progressSeen)
        {
            Assert.Superset(new HashSet<double> { 0.25, 0.5, 0.75, 1.0 }, progressSeen.ToHashSet());
            Assert.Equal(progressSeen.Order(), progressSeen); // reports arrive in order
        }
    }

    [Fact]
    public async Task A_failing_job_is_marked_failed_and_the_queue_runs_the_next_one()
    {
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);

        var failing = await queue.EnqueueAsync(new FailingJob());
        var next = await queue.EnqueueAsync(new SelfCheckJob(steps: 1, stepDelay: TimeSpan.Zero));
        await WaitUntilAsync(() => state.Find(next.Id)?.IsFinished == true);
        await queue.StopAsync(CancellationToken.None);

        var failed = state.Find(failing.Id)!;
        Assert.Equal(JobStatus.Failed, failed.Status);
        Assert.Equal("the weights file is truncated", failed.Error);
        Assert.Equal(JobStatus.Succeeded, state.Find(next.Id)!.Status);
    }

    [Fact]
    public void AddStudioServices_exposes_one_queue_as_both_IJobQueue_and_the_hosted_service()
    {
        var services = new ServiceCollection().AddLogging();
        services.AddStudioServices(new Microsoft.Extensions.Configuration.ConfigurationBuilder().Build());
        using var provider = services.BuildServiceProvider();

        var queue = provider.GetRequiredService<IJobQueue>();
        var hosted = provider.GetServices<IHostedService>();

        Assert.Contains(hosted, service => ReferenceEquals(service, queue));
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(Timeout);
        while (!condition())
            await Task.Delay(10, timeout.Token);
    }

    private sealed class FailingJob : StudioJob
    {
        public override string Name => "Failing";
        public override string Kind => "test";

        public override Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken) =>
            throw new InvalidDataException("the weights file is truncated");
    }
}

/// <summary>Studio:Workers: how many jobs run at once.</summary>
public sealed class JobWorkersTests
{
    /// <summary>Runs until released, recording how many such jobs run at the same time.</summary>
    private sealed class GateJob(SemaphoreSlim release, Counter running) : StudioJob
    {
        public override string Name => "gate";
        public override string Kind => "test";

        public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
        {
            running.Enter();
            try
            {
                await release.WaitAsync(cancellationToken);
            }
            finally
            {
                running.Leave();
            }
        }
    }

    private sealed class Counter
    {
        private int _now;
        public int Now => Volatile.Read(ref _now);
        public int Most { get; private set; }
        public void Enter() { lock (this) Most = Math.Max(Most, ++_now); }
        public void Leave() { lock (this) _now--; }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task At_most_the_configured_number_of_jobs_run_at_once(int workers)
    {
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance, workers);
        await queue.StartAsync(CancellationToken.None);
        using var release = new SemaphoreSlim(0);
        var running = new Counter();
        var jobs = new List<JobSnapshot>();
        for (int i = 0; i < 3; i++) jobs.Add(await queue.EnqueueAsync(new GateJob(release, running)));
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (running.Now < workers && DateTime.UtcNow < deadline) await Task.Delay(20);
        await Task.Delay(200); // time for a third to start, were it allowed
        Assert.Equal(workers, running.Now);
        Assert.Equal(3 - workers, jobs.Count(j => state.Find(j.Id)!.Status == JobStatus.Queued));
        release.Release(3);
        while (jobs.Any(j => !state.Find(j.Id)!.IsFinished) && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.All(jobs, j => Assert.Equal(JobStatus.Succeeded, state.Find(j.Id)!.Status));
        Assert.Equal(workers, running.Most);
        await queue.StopAsync(CancellationToken.None);
    }
}
