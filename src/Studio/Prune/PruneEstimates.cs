using System.Collections.Concurrent;
using System.Globalization;
using DiffusionPrune.Families;
using DiffusionPrune.Pruning;
using DiffusionPrune.Studio.Jobs;

namespace DiffusionPrune.Studio.Prune;

/// <summary>A prune run's time before it starts: the core's estimate, plus the quick look afterwards when there is one.</summary>
/// <param name="Prune">The run itself (<see cref="PruneTime.Estimate"/>).</param>
/// <param name="QuickLook">The quick look's sampling (pruned model and original, same noise), or null without one.</param>
public sealed record PruneEstimate(PruneTimeEstimate Prune, TimeSpan? QuickLook, PassTimes? QuickLookPass, QuickEvaluation? Evaluation)
{
    /// <summary>The whole job.</summary>
    public TimeSpan Total => Prune.Total + (QuickLook ?? TimeSpan.Zero);

    /// <summary>The line people read first: "Estimated time: about 1 min 20 s (pruning 1 min 13 s, quick look 7 s)".</summary>
    public string Headline => QuickLook is { } look
        ? $"Estimated time: about {PruneTime.Format(Total)} (pruning {PruneTime.Format(Prune.Total)}, quick look {PruneTime.Format(look)})."
        : $"Estimated time: about {PruneTime.Format(Total)}.";

    /// <summary>Where the figure comes from: the passes counted and their times on this machine.</summary>
    public string Details
    {
        get
        {
            string text = $"Pruning: {Prune.Describe()}.";
            if (QuickLookPass is { } pass && Evaluation is { } eval)
                text += string.Create(CultureInfo.InvariantCulture,
                    $" Quick look: {eval.Samples} images x {eval.Steps} steps from the pruned model and the original ({pass.ForwardMilliseconds:F1} ms per step at batch {pass.Batch}, the original timed in TorchSharp).");
            return text;
        }
    }

    /// <summary>Both, as one paragraph.</summary>
    public string Describe() => $"{Headline} {Details}";
}

/// <summary>
/// Estimates prune jobs for the Prune page from pass times measured on this machine (<see cref="PruneTime.Measure"/>):
/// each model, batch size and pass kind is timed once per process (a second or so) and the time kept while the
/// model's weights are unchanged, so changing a setting re-prices the run at once. One measurement runs at a time so
/// two pages do not time each other.
/// </summary>
public sealed class PruneEstimates : IDisposable
{
    private readonly ConcurrentDictionary<(string Model, DateTime Written, PassKind Kind), PassTimes> _times = new();
    private readonly SemaphoreSlim _one = new(1, 1);
    private bool _disposed;
    private (string Path, DateTime Written, DiffusionPrune.Models.DiffusionModel Model)? _loaded; // the last model priced: a setting change does not reload it

    /// <summary>How many passes this service has timed (a test sees measurements reused).</summary>
    public int Measurements { get; private set; }

    /// <summary>How many times this service has loaded a model (a test sees a setting change reuse it).</summary>
    public int ModelLoads { get; private set; }

    /// <summary>The estimate for <paramref name="request"/>, with the quick look <paramref name="evaluation"/> when given.</summary>
    public async Task<PruneEstimate> EstimateAsync(PruneRequest request, QuickEvaluation? evaluation, CancellationToken cancel = default)
    {
        await _one.WaitAsync(cancel);
        try
        {
            if (_disposed) throw new OperationCanceledException("The Studio is shutting down.");
            return await Task.Run(() =>
            {
                var written = Directory.EnumerateFiles(request.ModelPath, "*.safetensors").Select(File.GetLastWriteTimeUtc).DefaultIfEmpty().Max();
                if (_loaded is not { } held || held.Path != request.ModelPath || held.Written != written)
                {
                    _loaded?.Model.Dispose();
                    _loaded = null;
                    _loaded = (request.ModelPath, written, ModelFamilies.Load(request.ModelPath));
                    ModelLoads++;
                }
                var model = _loaded.Value.Model;
                PassTimes Times(PassKind kind) => _times.GetOrAdd((request.ModelPath, written, kind), _ =>
                {
                    Measurements++;
                    return PruneTime.Measure(model, kind, cancel: cancel);
                });
                var prune = PruneTime.Estimate(model, request, Times);
                if (evaluation is null) return new PruneEstimate(prune, null, null, null);
                var pass = Times(new PassKind(evaluation.Samples, Backward: false, WeightGradients: false));
                var look = TimeSpan.FromMilliseconds(2 * evaluation.Steps * pass.ForwardMilliseconds);
                return new PruneEstimate(prune, look, pass, evaluation);
            }, cancel);
        }
        finally
        {
            _one.Release();
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Waits for an estimate in flight: the held model must not be freed while a pass runs on it on another thread.
    /// </remarks>
    public void Dispose()
    {
        _one.Wait();
        _disposed = true;
        _loaded?.Model.Dispose();
        _loaded = null;
        _one.Release(); // a waiting estimate then sees _disposed and stops; the semaphore itself is left to the GC
    }
}
