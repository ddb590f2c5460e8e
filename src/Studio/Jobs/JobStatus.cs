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
    /// <summary>Stopped because the Studio shut down.</summary>
    Canceled,
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
public sealed record JobSnapshot(
    Guid Id,
    string Name,
    JobStatus Status,
    double Progress,
    string Message,
    DateTimeOffset EnqueuedAt,
    DateTimeOffset? StartedAt = null,
    DateTimeOffset? FinishedAt = null,
    string? Error = null)
{
    /// <summary>True once the job can change no more.</summary>
    public bool IsFinished => Status is JobStatus.Succeeded or JobStatus.Failed or JobStatus.Canceled;
}

/// <summary>A progress report from a running job.</summary>
/// <param name="Fraction">Fraction done, 0 to 1 (clamped).</param>
/// <param name="Message">What the job is doing now.</param>
public readonly record struct JobProgress(double Fraction, string Message);
