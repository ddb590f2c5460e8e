using System.Runtime;
using DiffusionPrune.Training;

namespace DiffusionPrune.Tests.Training;

/// <summary>
/// Shares a collection with <see cref="TrainerTests"/> so its deliberate 100 MB of garbage does not force collections
/// while the resume test compares two training runs: TorchSharp's implicit scalars can be finalized mid-call when a
/// collection lands during a native call, which is what <see cref="GcPause"/> guards against inside one process's steps.
/// </summary>
[Collection(TrainerTests.Collection)]
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
    }

    [Fact]
    public void A_unit_that_outgrows_the_budget_or_nests_still_completes()
    {
        long total = GcPause.Run(() =>
        {
            long sum = 0;
            for (int i = 0; i < 100; i++) sum += new byte[1 << 20].Length; // 100 MB > budget: the runtime collects and leaves the region
            sum += GcPause.Run(() => 1);                                   // nested use runs unpaused
            return sum;
        });
        Assert.Equal(100L * (1 << 20) + 1, total);
        Assert.NotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
        GcPause.Run(() => { }); // and the next unit can pause again
    }
}
