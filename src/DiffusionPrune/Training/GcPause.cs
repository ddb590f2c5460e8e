using System.Runtime;

namespace DiffusionPrune.Training;

/// <summary>
/// Runs one unit of work (a training step, a mask-optimisation iteration) with the garbage collector paused.
/// TorchSharp 0.107 passes scalars it converts implicitly (the alpha of <c>a + b</c>, the factor of <c>x * 0.5</c>)
/// to native code without keeping them alive, so a collection that lands during that call can let the finalizer
/// free the scalar while libtorch reads it. Seen here as "Expected false to be true ... toFloat" about once per
/// few thousand DiT training steps, and it can as well pass a wrong value silently. Collections then happen
/// between steps, when no native call holds such a scalar.
/// </summary>
public static class GcPause
{
    /// <summary>Managed allocation allowed inside one paused unit; a step that allocates more simply collects.</summary>
    public const long BudgetBytes = 64L << 20;

    public static T Run<T>(Func<T> body)
    {
        bool paused = false;
        try
        {
            paused = GC.TryStartNoGCRegion(BudgetBytes);
        }
        catch (Exception e) when (e is ArgumentOutOfRangeException or InvalidOperationException)
        {
            // Budget above this runtime's limit, or a region already open (nested use): run unpaused.
        }
        try
        {
            return body();
        }
        finally
        {
            if (paused && GCSettings.LatencyMode == GCLatencyMode.NoGCRegion)
            {
                try { GC.EndNoGCRegion(); }
                catch (InvalidOperationException) { /* the budget ran out and the region ended by itself */ }
            }
        }
    }

    public static void Run(Action body) => Run(() => { body(); return 0; });
}
