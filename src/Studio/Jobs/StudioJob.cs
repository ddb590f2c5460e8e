namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// A unit of long work run by <see cref="IJobQueue"/> on a background thread, never on a
/// component's render thread. Report progress through the given <see cref="IProgress{T}"/>;
/// it updates <see cref="JobStateService"/> synchronously, in order.
/// </summary>
public abstract class StudioJob
{
    /// <summary>The job's identity, shared with its <see cref="JobSnapshot"/>.</summary>
    public Guid Id { get; init; } = Guid.NewGuid();

    /// <summary>What the job does, for people.</summary>
    public abstract string Name { get; }

    /// <summary>The kind of job, for the JSON API: prune, distill, self-check.</summary>
    public abstract string Kind { get; }

    /// <summary>The model folder the job writes, if it writes one (the API names it as the catalog lists it).</summary>
    public virtual string? OutputPath => null;

    /// <summary>The job's request as JSON, stored so an interrupted job can be run again (<see cref="StudioJobs.Resume"/>); null when it cannot.</summary>
    public virtual string? RequestJson => null;

    /// <summary>What the job made, for people (its output and figures); set by the job before it returns.</summary>
    public string? Result { get; protected set; }

    /// <summary>Does the work. Throwing marks the job failed with the exception's message.</summary>
    public abstract Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken);
}
