namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// A job that does nothing but report progress over a few steps: it proves the queue runs work
/// off the render thread and that pages see live updates.
/// </summary>
public sealed class SelfCheckJob : StudioJob
{
    private readonly int _steps;
    private readonly TimeSpan _stepDelay;

    /// <summary>Creates a self-check of <paramref name="steps"/> steps (default 5), <paramref name="stepDelay"/> apart (default 400 ms).</summary>
    public SelfCheckJob(int steps = 5, TimeSpan? stepDelay = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        _steps = steps;
        _stepDelay = stepDelay ?? TimeSpan.FromMilliseconds(400);
    }

    /// <inheritdoc />
    public override string Kind => "self-check";

    /// <inheritdoc />
    public override string Name => "Self-check";

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        for (var step = 1; step <= _steps; step++)
        {
            await Task.Delay(_stepDelay, cancellationToken);
            progress.Report(new JobProgress((double)step / _steps, $"Step {step} of {_steps}"));
        }
    }
}
