using DiffusionPrune.Runtime;

namespace DiffusionPrune.Studio.Diagnostics;

/// <summary>
/// Runs <c>dprune doctor</c>'s check for the Studio's System page: one at a time, off the circuit's thread, keeping
/// the last report so every open page and a revisit show it without checking again.
/// </summary>
public sealed class SystemCheckService(Func<DoctorReport> run)
{
    private readonly SemaphoreSlim _gate = new(1, 1);

    /// <summary>The last finished report, or null before the first check.</summary>
    public DoctorReport? Last { get; private set; }

    /// <summary>When <see cref="Last"/> finished.</summary>
    public DateTimeOffset? LastFinishedAt { get; private set; }

    /// <summary>A check is running now.</summary>
    public bool Running { get; private set; }

    /// <summary>The check threw (the native libraries did not load, say); null after a check that ran.</summary>
    public string? LastError { get; private set; }

    /// <summary>Raised, on the checking thread, when a check starts or ends.</summary>
    public event Action? Changed;

    /// <summary>Checks again (a check already running is awaited first, then this one runs).</summary>
    public async Task RunAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            Running = true;
            Changed?.Invoke();
            try
            {
                // The check computes for about a second of native time: never on the circuit's thread.
                Last = await Task.Run(run, cancellationToken);
                LastFinishedAt = DateTimeOffset.Now;
                LastError = null;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                LastError = e.Message;
            }
        }
        finally
        {
            Running = false;
            _gate.Release();
            Changed?.Invoke();
        }
    }
}
