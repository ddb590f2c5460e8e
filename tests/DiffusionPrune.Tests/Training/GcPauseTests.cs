using System.Runtime;
using DiffusionPrune.Training;

namespace DiffusionPrune.Tests.Training;

public class GcPauseTests
{
    [Fact]
    public void A_paused_unit_returns_its_value_and_leaves_the_collector_as_it_was()
    {
        int value = GcPause.Run(() =>
        {
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
            for (int i = 0; i < 200; i++) sum += new byte[1 << 20].Length; // 200 MB > budget: the runtime collects and leaves the region
            sum += GcPause.Run(() => 1);                                   // nested use runs unpaused
            return sum;
        });
        Assert.Equal(200L * (1 << 20) + 1, total);
        Assert.NotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
        GcPause.Run(() => { }); // and the next unit can pause again
    }
}
