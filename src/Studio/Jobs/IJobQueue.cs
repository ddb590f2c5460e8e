namespace DiffusionPrune.Studio.Jobs;

/// <summary>Accepts long work to run in the background, one job at a time, in order.</summary>
public interface IJobQueue
{
    /// <summary>
    /// Queues <paramref name="job"/> and returns at once with its queued snapshot; follow it through
    /// <see cref="JobStateService"/>.
    /// </summary>
    ValueTask<JobSnapshot> EnqueueAsync(StudioJob job, CancellationToken cancellationToken = default);
}
