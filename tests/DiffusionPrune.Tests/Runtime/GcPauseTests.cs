using DiffusionPrune.Runtime;
using System.Runtime;
using System.Runtime.InteropServices;
using DiffusionPrune.Tests.Runtime;

using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Runtime;

/// <summary>
/// The pause is process-wide, so these tests run alone (no other test's units open or close the region under them).
/// TorchSharp's implicit scalars can be finalized mid-call when a collection lands during a native call, which is
/// what <see cref="GcPause"/> guards against.
/// </summary>
[Collection(OneDnnSwitchCollection.Name)]
public class GcPauseTests
{
    [Fact]
    public void A_paused_unit_returns_its_value_and_leaves_the_collector_as_it_was()
    {
        int value = GcPause.Run(() =>
        {
            Assert.Equal(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode); // the collector is paused inside the unit
            var garbage = new List<byte[]>();
            for (int i = 0; i < 100; i++) garbage.Add(new byte[10_000]); // 1 MB, well inside the budget
            return garbage.Count;
        });
        Assert.Equal(100, value);
        Assert.NotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
        Assert.Equal(0, GcPause.ActiveUnits);
    }

    [Fact]
    public void A_unit_that_outgrows_the_budget_or_nests_still_completes()
    {
        long total = GcPause.Run(() =>
        {
            long sum = 0;
            for (int i = 0; i < 100; i++) sum += new byte[1 << 20].Length; // 100 MB > budget: the runtime collects and leaves the region
            sum += GcPause.Run(() => 1);                                   // nested use runs inside the outer unit's region
            return sum;
        });
        Assert.Equal(100L * (1 << 20) + 1, total);
        Assert.NotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
        GcPause.Run(() => Assert.Equal(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode)); // and the next unit pauses again
    }

    [Fact]
    public void Overlapping_units_on_two_threads_share_one_region_that_ends_with_the_last()
    {
        using var firstInside = new ManualResetEventSlim();
        using var secondDone = new ManualResetEventSlim();
        GCLatencyMode modeAfterSecond = GCLatencyMode.Batch;
        var first = new Thread(() => GcPause.Run(() =>
        {
            firstInside.Set();
            secondDone.Wait();
            modeAfterSecond = GCSettings.LatencyMode; // the second unit ended; this one must still be paused
        }));
        first.Start();
        firstInside.Wait();
        GcPause.Run(() => Assert.Equal(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode));
        secondDone.Set();
        first.Join();
        Assert.Equal(GCLatencyMode.NoGCRegion, modeAfterSecond);
        Assert.NotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
    }

    [Fact]
    public void Another_thread_allocating_does_not_collect_while_a_unit_runs()
    {
        int before = 0; // read inside: entering the region itself collects once to make room
        int during = GcPause.Run(() =>
        {
            before = GC.CollectionCount(0);
            // 20 MB of small objects from another thread: enough for several gen-0 collections when not paused.
            var allocator = new Thread(() =>
            {
                for (int i = 0; i < 200_000; i++) GC.KeepAlive(new byte[100]);
            });
            allocator.Start();
            allocator.Join();
            return GC.CollectionCount(0);
        });
        Assert.Equal(before, during);
    }

    /// <summary>
    /// The race itself: one thread computes with implicit scalars (<c>x * 3.0 * 0.5 + 2.0</c>) in paused units while
    /// another allocates. Measured unpaused in a console program: 17 failures ("Expected false to be true" from libtorch)
    /// in 300,000 units; inside the test host the race is rarer still, so this guards against regressions, while the
    /// deterministic proof of the mechanism is <see cref="Another_thread_allocating_does_not_collect_while_a_unit_runs"/>.
    /// </summary>
    [Fact]
    public void Implicit_scalars_survive_a_thread_that_allocates_while_units_compute()
    {
        using var x = ones(8, 8);
        bool stop = false;
        var allocator = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
                for (int k = 0; k < 64; k++) GC.KeepAlive(new object[64]);
        });
        allocator.Start();
        int wrong = 0, failed = 0;
        try
        {
            for (int i = 0; i < 20_000; i++)
            {
                try
                {
                    float value = GcPause.Run(() =>
                    {
                        using var scope = NewDisposeScope();
                        return (x * 3.0 * 0.5 + 2.0).sum().item<float>();
                    });
                    if (value != 64 * 3.5f) wrong++;
                }
                catch (ExternalException)
                {
                    failed++;
                }
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            allocator.Join();
        }
        Assert.Equal((0, 0), (wrong, failed));
    }
}
