using System.Runtime;

namespace DiffusionPrune.Runtime;

/// <summary>
/// Runs one unit of native work (a training step, a mask-optimisation iteration, a sampling step, a Taylor
/// micro-batch) with the garbage collector paused, so temporaries stay alive across native calls.
/// </summary>
/// <remarks>
/// TorchSharp 0.107 passes the scalars it converts implicitly (the alpha of <c>a + b</c>, the factor of
/// <c>x * 0.5</c>) to native code by handle without keeping the managed object alive. A collection that another
/// thread triggers during that call lets the finalizer free the scalar while libtorch reads it: "Expected false to be
/// true" from libtorch, or silently a wrong value. Measured here with one thread running <c>x * 3.0 * 0.5 + 2.0</c>
/// while another allocates: 17 failures in 300,000 unpaused units, none paused (the test
/// <c>GcPauseTests</c> keeps that stress test). Tensors made inside a dispose scope are kept alive by the scope;
/// scalars are not, hence this pause.
/// <para>The pause is process-wide and reference-counted: units on several threads (the Studio running two jobs,
/// parallel tests) share one no-GC region, which ends when the last of them ends. A unit that allocates more than
/// <see cref="BudgetBytes"/> of managed memory while paused ends the region early; the runtime then collects as
/// usual, so nothing breaks, but the rest of that unit is unprotected (our units allocate a few kilobytes).</para>
/// </remarks>
public static class GcPause
{
    /// <summary>Managed allocation allowed while paused; a unit that allocates more simply collects.</summary>
    public const long BudgetBytes = 64L << 20;

    private static readonly object Gate = new();
    private static int _active;
    private static bool _paused;

    /// <summary>How many units are running now (for tests).</summary>
    public static int ActiveUnits { get { lock (Gate) return _active; } }

    public static T Run<T>(Func<T> body)
    {
        Enter();
        try
        {
            return body();
        }
        finally
        {
            Exit();
        }
    }

    public static void Run(Action body) => Run(() => { body(); return 0; });

    private static void Enter()
    {
        lock (Gate)
        {
            if (_active++ > 0) return; // the region of the units already running covers this one
            try
            {
                _paused = GCSettings.LatencyMode != GCLatencyMode.NoGCRegion && GC.TryStartNoGCRegion(BudgetBytes);
            }
            catch (Exception e) when (e is ArgumentOutOfRangeException or InvalidOperationException)
            {
                _paused = false; // budget above this runtime's limit, or a region someone else opened: run unpaused
            }
        }
    }

    private static void Exit()
    {
        lock (Gate)
        {
            if (--_active > 0 || !_paused) return;
            _paused = false;
            if (GCSettings.LatencyMode != GCLatencyMode.NoGCRegion) return; // the budget ran out and the region ended by itself
            try { GC.EndNoGCRegion(); }
            catch (InvalidOperationException) { /* ended by an induced collection meanwhile */ }
        }
    }
}
