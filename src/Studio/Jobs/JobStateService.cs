using Microsoft.Extensions.Logging;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// The one place that knows every job's state. The queue writes it from a background thread;
/// pages read <see cref="Jobs"/> and subscribe to <see cref="Changed"/> (marshalling to their
/// renderer with <c>InvokeAsync</c>) and unsubscribe when disposed.
/// </summary>
public sealed class JobStateService
{
    private readonly Lock _gate = new();
    private readonly Dictionary<Guid, JobSnapshot> _jobs = [];
    private readonly Dictionary<Guid, string> _requests = [];
    private readonly Dictionary<Guid, DateTimeOffset> _saved = [];
    private readonly TimeProvider _time;
    private readonly IJobStore? _store;
    private readonly ILogger? _logger;

    /// <summary>How often a running job's progress is written to the store (status changes are written at once).</summary>
    public static readonly TimeSpan ProgressSaveInterval = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Creates the service; <paramref name="time"/> defaults to the system clock. With a <paramref name="store"/>, the
    /// jobs it holds are loaded, and those that were queued or running when the Studio stopped become
    /// <see cref="JobStatus.Interrupted"/>; every change is written back. A store that fails to write never fails a
    /// job: the failure is logged to <paramref name="logger"/> and kept in <see cref="StoreProblem"/>, and the jobs go on
    /// in memory.
    /// </summary>
    public JobStateService(TimeProvider? time = null, IJobStore? store = null, ILogger? logger = null)
    {
        _time = time ?? TimeProvider.System;
        _store = store;
        _logger = logger;
        if (store is null) return;
        foreach (var (stored, request) in store.LoadAll())
        {
            var job = stored;
            if (job.Status is JobStatus.Queued or JobStatus.Running)
            {
                string line = $"Interrupted: the Studio stopped while the job was {job.Status.ToString().ToLowerInvariant()}" +
                              (request is null ? "." : "; it can be resumed.");
                job = job with { Status = JobStatus.Interrupted, Message = line, FinishedAt = _time.GetUtcNow(), Log = [.. job.Lines, line] };
                Persist(job);
            }
            _jobs[job.Id] = job;
            if (request is not null) _requests[job.Id] = request;
        }
    }

    /// <summary>Why the last write to the store failed (jobs are then kept in memory only), or null while writes succeed.</summary>
    public string? StoreProblem { get; private set; }

    /// <summary>The request an interrupted job can be run again from, or null.</summary>
    public string? RequestOf(Guid id)
    {
        lock (_gate)
            return _requests.GetValueOrDefault(id);
    }

    /// <summary>
    /// Raised after any job changes, on the thread that changed it. Handlers must be quick and must
    /// not throw; read <see cref="Jobs"/> for the new state.
    /// </summary>
    public event Action? Changed;

    /// <summary>How many handlers <see cref="Changed"/> has; lets tests prove pages unsubscribe.</summary>
    internal int SubscriberCount => Changed?.GetInvocationList().Length ?? 0;

    /// <summary>Every known job, oldest first.</summary>
    public IReadOnlyList<JobSnapshot> Jobs
    {
        get
        {
            lock (_gate)
                return _jobs.Values.OrderBy(job => job.EnqueuedAt).ThenBy(job => job.Id).ToArray();
        }
    }

    /// <summary>The job with <paramref name="id"/>, or null when there is none.</summary>
    public JobSnapshot? Find(Guid id)
    {
        lock (_gate)
            return _jobs.GetValueOrDefault(id);
    }

    /// <summary>Records <paramref name="job"/> as queued.</summary>
    public JobSnapshot Track(StudioJob job)
    {
        if (job.RequestJson is { } request)
            lock (_gate)
                _requests[job.Id] = request;
        return Set(new JobSnapshot(job.Id, job.Name, JobStatus.Queued, 0, "Waiting to start", _time.GetUtcNow(), Kind: job.Kind, OutputPath: job.OutputPath),
            job.RequestJson);
    }

    /// <summary>
    /// Queues an interrupted job again (the same id), keeping its log and figures; null when it is no longer interrupted
    /// (another resume won the race). The check and the change are one step.
    /// </summary>
    public JobSnapshot? TryRequeue(StudioJob job)
    {
        lock (_gate)
        {
            var queued = UpdateIf(job.Id, current => current.Status == JobStatus.Interrupted, current => current with
            {
                Status = JobStatus.Queued, Message = "Waiting to resume", FinishedAt = null, Error = null, Name = job.Name,
                Log = [.. current.Lines, "Resumed by the user after the interruption."],
            }, notify: false);
            if (queued is not null && job.RequestJson is { } request) _requests[job.Id] = request;
            if (queued is null) return null;
        }
        Changed?.Invoke();
        return Find(job.Id);
    }

    /// <summary>Marks a job canceled while it is still queued (it never starts); null when it has started or finished.</summary>
    public JobSnapshot? TryCancelQueued(Guid id, string message = "Canceled before it started") =>
        UpdateIf(id, job => job.Status == JobStatus.Queued,
            job => job with { Status = JobStatus.Canceled, Message = message, FinishedAt = _time.GetUtcNow() });

    /// <summary>Marks the job interrupted: the Studio is stopping while it runs (it can be resumed after the restart).</summary>
    public JobSnapshot MarkInterrupted(Guid id) =>
        Update(id, job => job with { Status = JobStatus.Interrupted, Message = "Interrupted: the Studio stopped while the job was running", FinishedAt = _time.GetUtcNow() });

    /// <summary>Marks the job running.</summary>
    public JobSnapshot MarkRunning(Guid id) =>
        Update(id, job => job with { Status = JobStatus.Running, Message = "Started", StartedAt = _time.GetUtcNow() });

    /// <summary>Marks a queued job running; null when it is no longer queued (cancelled between its dequeue and now). One step.</summary>
    public JobSnapshot? TryMarkRunning(Guid id) =>
        UpdateIf(id, job => job.Status == JobStatus.Queued, job => job with { Status = JobStatus.Running, Message = "Started", StartedAt = _time.GetUtcNow() });

    /// <summary>How many log lines a job keeps.</summary>
    public const int LogLines = 500;

    /// <summary>
    /// Records a progress report: the fraction (clamped to 0..1) and message, unless it is a note; its figures join
    /// the history, its picture replaces the last, its message joins the log.
    /// </summary>
    public JobSnapshot ReportProgress(Guid id, JobProgress progress) =>
        Update(id, job =>
        {
            var log = job.Lines.Count >= LogLines ? job.Lines.Skip(job.Lines.Count - LogLines + 1) : job.Lines;
            var next = progress.Note ? job : job with { Progress = Math.Clamp(progress.Fraction, 0, 1), Message = progress.Message };
            return next with
            {
                Log = progress.Message.Length > 0 && (progress.Note || progress.Metrics is null) ? [.. log, progress.Message] : job.Log,
                History = progress.Metrics is { Count: > 0 } metrics
                    ? [.. job.Points, new JobMetrics(progress.Stage ?? "", progress.Step ?? job.Points.Count + 1, metrics)]
                    : job.History,
                Preview = progress.Preview ?? job.Preview,
            };
        });

    /// <summary>Records what a job made, before it is marked succeeded.</summary>
    public JobSnapshot SetResult(Guid id, string result) => Update(id, job => job with { Result = result });

    /// <summary>Marks the job succeeded, at full progress.</summary>
    public JobSnapshot MarkSucceeded(Guid id) =>
        Update(id, job => job with { Status = JobStatus.Succeeded, Progress = 1, Message = "Done", FinishedAt = _time.GetUtcNow() });

    /// <summary>Marks the job failed with <paramref name="error"/>.</summary>
    public JobSnapshot MarkFailed(Guid id, string error) =>
        Update(id, job => job with { Status = JobStatus.Failed, Message = "Failed", Error = error, FinishedAt = _time.GetUtcNow() });

    /// <summary>Marks the job canceled (by the user, or the Studio is shutting down).</summary>
    public JobSnapshot MarkCanceled(Guid id, string message = "Canceled") =>
        Update(id, job => job with { Status = JobStatus.Canceled, Message = message, FinishedAt = _time.GetUtcNow() });

    private JobSnapshot Update(Guid id, Func<JobSnapshot, JobSnapshot> change) => UpdateIf(id, _ => true, change)!;

    private JobSnapshot? UpdateIf(Guid id, Func<JobSnapshot, bool> when, Func<JobSnapshot, JobSnapshot> change, bool notify = true)
    {
        JobSnapshot updated;
        bool save;
        lock (_gate)
        {
            if (!_jobs.TryGetValue(id, out var current))
                throw new InvalidOperationException($"No job {id} is tracked; call Track before updating it.");
            if (!when(current)) return null;
            updated = change(current);
            _jobs[id] = updated;
            var now = _time.GetUtcNow();
            // status and results at once; progress at most every ProgressSaveInterval
            save = _store is not null && (updated.Status != current.Status || updated.Result != current.Result
                || now - _saved.GetValueOrDefault(id) >= ProgressSaveInterval);
            if (save) _saved[id] = now;
            if (save) Persist(updated);
        }
        if (notify) Changed?.Invoke(); // outside the lock: handlers may read Jobs
        return updated;
    }

    private JobSnapshot Set(JobSnapshot snapshot, string? request = null)
    {
        lock (_gate)
        {
            _jobs[snapshot.Id] = snapshot;
            Persist(snapshot, request);
            _saved[snapshot.Id] = _time.GetUtcNow();
        }
        Changed?.Invoke();
        return snapshot;
    }

    // A full disk, a locked or corrupt database or an unwritable folder must not fail the job or stop the Studio: the
    // state stays right in memory, the failure is logged once per distinct problem and shown on the Jobs page.
    private void Persist(JobSnapshot snapshot, string? request = null)
    {
        if (_store is null) return;
        try
        {
            _store.Save(snapshot, request);
            StoreProblem = null;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            string problem = Formats.Messages.OneLine(e.Message);
            if (problem != StoreProblem) _logger?.LogError(e, "The job store could not save job {JobId}; jobs are kept in memory only", snapshot.Id);
            StoreProblem = problem;
        }
    }
}
