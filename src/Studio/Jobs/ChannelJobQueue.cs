using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// <see cref="IJobQueue"/> backed by an unbounded <see cref="Channel{T}"/> and drained by this
/// <see cref="BackgroundService"/>: <see cref="Workers"/> jobs at a time (one by default, <c>Studio:Workers</c>; every
/// job holds its model and activations, so more workers need more memory). Registered once and exposed both as the
/// queue and as the hosted service, so enqueuers and the runner share one channel.
/// </summary>
public sealed class ChannelJobQueue : BackgroundService, IJobQueue
{
    private readonly Channel<StudioJob> _channel =
        Channel.CreateUnbounded<StudioJob>(new UnboundedChannelOptions { SingleReader = false });
    private readonly JobStateService _state;
    private readonly ILogger<ChannelJobQueue> _logger;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<Guid, CancellationTokenSource> _cancels = new();

    /// <summary>Creates the queue; it runs jobs once started as a hosted service, <paramref name="workers"/> at a time.</summary>
    public ChannelJobQueue(JobStateService state, ILogger<ChannelJobQueue> logger, int workers = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(workers, 1);
        _state = state;
        _logger = logger;
        Workers = workers;
    }

    /// <summary>How many jobs run at once.</summary>
    public int Workers { get; }

    /// <inheritdoc />
    public async ValueTask<JobSnapshot> EnqueueAsync(StudioJob job, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(job);
        _cancels[job.Id] = new CancellationTokenSource(); // before the job is visible, so a cancel right away is not lost
        var snapshot = _state.Track(job);
        await _channel.Writer.WriteAsync(job, cancellationToken);
        return snapshot;
    }

    /// <inheritdoc />
    public async ValueTask<JobSnapshot?> ResumeAsync(Guid id, CancellationToken cancellationToken = default)
    {
        if (_state.Find(id) is not { Status: JobStatus.Interrupted } snapshot || _state.RequestOf(id) is not { } request) return null;
        var job = StudioJobs.Resume(snapshot.Kind, request, id);
        var cancel = new CancellationTokenSource();
        if (!_cancels.TryAdd(id, cancel)) // another resume of this job is under way
        {
            cancel.Dispose();
            return null;
        }
        if (_state.TryRequeue(job) is not { } queued) // resumed already between the check and here
        {
            if (_cancels.TryRemove(id, out var unused)) unused.Dispose();
            return null;
        }
        await _channel.Writer.WriteAsync(job, cancellationToken);
        return queued;
    }

    /// <inheritdoc />
    public bool Cancel(Guid id)
    {
        if (_state.Find(id) is not { IsFinished: false } || !_cancels.TryGetValue(id, out var cancel)) return false;
        try
        {
            cancel.Cancel();
        }
        catch (ObjectDisposedException)
        {
            return false; // the job finished (and let go of its token) between the lookup and here
        }
        _state.TryCancelQueued(id); // a queued job shows (and is stored as) canceled at once, not when its turn comes
        return true;
    }

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        await Task.WhenAll(Enumerable.Range(0, Workers).Select(_ => Task.Run(async () =>
        {
            try
            {
                await foreach (var job in _channel.Reader.ReadAllAsync(stoppingToken))
                    await RunAsync(job, stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                // Shutting down: jobs still queued stay Queued (and become interrupted on the next start).
            }
        }, CancellationToken.None)));
    }

    private async Task RunAsync(StudioJob job, CancellationToken stoppingToken)
    {
        var own = _cancels.GetValueOrDefault(job.Id) ?? new CancellationTokenSource();
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(own.Token, stoppingToken);
        try
        {
            if (own.IsCancellationRequested)
            {
                _state.TryCancelQueued(job.Id);
                return;
            }
            if (_state.TryMarkRunning(job.Id) is null) return; // cancelled while it was being dequeued: it never starts
            await job.RunAsync(new StateProgress(_state, job.Id), linked.Token);
            if (job.Result is { } result) _state.SetResult(job.Id, result);
            _state.MarkSucceeded(job.Id);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            _state.MarkInterrupted(job.Id); // the Studio is stopping: resumable after the restart
            throw;
        }
        catch (OperationCanceledException) when (own.IsCancellationRequested)
        {
            _state.MarkCanceled(job.Id, "Canceled by the user; nothing half-written was left");
        }
        catch (Exception ex)
        {
            // A failing job must not stop the queue: record why, and go on to the next one.
            _logger.LogError(ex, "Job {JobName} ({JobId}) failed", job.Name, job.Id);
            _state.MarkFailed(job.Id, ex.Message);
        }
        finally
        {
            if (_cancels.TryRemove(job.Id, out var done)) done.Dispose();
        }
    }

    // Reports straight into the state service, in order. (Progress<T> would post each report to
    // the thread pool, where they can arrive out of order.)
    private sealed class StateProgress(JobStateService state, Guid id) : IProgress<JobProgress>
    {
        public void Report(JobProgress value) => state.ReportProgress(id, value);
    }
}
