namespace DiffusionPrune.Studio.Jobs;

/// <summary>Accepts long work to run in the background, one job at a time, in order.</summary>
public interface IJobQueue
{
    /// <summary>
    /// Queues <paramref name="job"/> and returns at once with its queued snapshot; follow it through
    /// <see cref="JobStateService"/>.
    /// </summary>
    ValueTask<JobSnapshot> EnqueueAsync(StudioJob job, CancellationToken cancellationToken = default);

    /// <summary>
    /// Asks a queued or running job to stop: a queued one never starts, a running one stops at its next iteration or
    /// step and leaves no half-written output. False when the job is unknown or already finished.
    /// </summary>
    bool Cancel(Guid id);

    /// <summary>
    /// Queues an <see cref="JobStatus.Interrupted"/> job again under its id, continuing from the core's checkpoint where
    /// there is one (<see cref="StudioJobs.Resume"/>). Null when the job is unknown, not interrupted, or kept no request.
    /// </summary>
    ValueTask<JobSnapshot?> ResumeAsync(Guid id, CancellationToken cancellationToken = default);
}
