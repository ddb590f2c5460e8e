namespace DiffusionPrune.Studio.Jobs;

/// <summary>Where a job is in its life.</summary>
public enum JobStatus
{
    /// <summary>Waiting in the queue.</summary>
    Queued,
    /// <summary>Being run by the background queue.</summary>
    Running,
    /// <summary>Finished without error.</summary>
    Succeeded,
    /// <summary>Threw; <see cref="JobSnapshot.Error"/> says why.</summary>
    Failed,
    /// <summary>Stopped by the user.</summary>
    Canceled,
    /// <summary>Cut off by a restart of the Studio (queued or running when it stopped); can be resumed.</summary>
    Interrupted,
}

/// <summary>An immutable view of one job, safe to hand to any thread.</summary>
/// <param name="Id">The job's identity.</param>
/// <param name="Name">What the job does, for people.</param>
/// <param name="Status">Where the job is in its life.</param>
/// <param name="Progress">Fraction done, 0 to 1.</param>
/// <param name="Message">The job's latest word on what it is doing; empty when it has said nothing.</param>
/// <param name="EnqueuedAt">When the job was queued.</param>
/// <param name="StartedAt">When the queue started it; null while queued.</param>
/// <param name="FinishedAt">When it stopped; null until then.</param>
/// <param name="Error">Why it failed; null unless <see cref="JobStatus.Failed"/>.</param>
/// <param name="History">The named figures the job reported (loss, expected kept fraction, ...), in order: the page's charts.</param>
/// <param name="Preview">The latest picture the job sent (a sample grid), if any.</param>
/// <param name="Log">The job's lines for people, in order (the last 500).</param>
/// <param name="Result">What the job made, for people (the output folder and its figures), once it succeeded.</param>
/// <param name="Kind">The kind of job (prune, distill, self-check).</param>
/// <param name="OutputPath">The model folder the job writes, if any.</param>
public sealed record JobSnapshot(
    Guid Id,
    string Name,
    JobStatus Status,
    double Progress,
    string Message,
    DateTimeOffset EnqueuedAt,
    DateTimeOffset? StartedAt = null,
    DateTimeOffset? FinishedAt = null,
    string? Error = null,
    IReadOnlyList<JobMetrics>? History = null,
    DiffusionPrune.Pipeline.PreviewImage? Preview = null,
    IReadOnlyList<string>? Log = null,
    string? Result = null,
    string Kind = "",
    string? OutputPath = null)
{
    /// <summary><see cref="History"/>, never null.</summary>
    public IReadOnlyList<JobMetrics> Points => History ?? [];

    /// <summary><see cref="Log"/>, never null.</summary>
    public IReadOnlyList<string> Lines => Log ?? [];

    /// <summary>True once the job can change no more (an interrupted one only by being resumed).</summary>
    public bool IsFinished => Status is JobStatus.Succeeded or JobStatus.Failed or JobStatus.Canceled or JobStatus.Interrupted;
}

/// <summary>A progress report from a running job.</summary>
/// <param name="Fraction">Fraction done, 0 to 1 (clamped).</param>
/// <param name="Message">What the job is doing now.</param>
/// <param name="Metrics">Named figures of this moment, appended to <see cref="JobSnapshot.History"/> with <paramref name="Step"/>.</param>
/// <param name="Preview">A picture to show (a sample grid).</param>
/// <param name="Step">The step the figures belong to (an iteration).</param>
/// <param name="Note">A line for the job's log that does not change its message.</param>
/// <param name="Stage">The stage the figures come from (prune, evaluate, ...).</param>
public readonly record struct JobProgress(double Fraction, string Message, IReadOnlyDictionary<string, double>? Metrics = null,
    DiffusionPrune.Pipeline.PreviewImage? Preview = null, long? Step = null, bool Note = false, string? Stage = null);

/// <summary>The figures a job reported at one step.</summary>
public sealed record JobMetrics(string Stage, long Step, IReadOnlyDictionary<string, double> Values);
