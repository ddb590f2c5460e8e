using DiffusionPrune.Runtime;

namespace DiffusionPrune.Tests.Runtime;

/// <summary>The guard's decision, with an injected op check and workaround: no CPU fault is needed to test it.</summary>
public class NumericsGuardTests
{
    private sealed class FakeWorkaround : IKernelWorkaround
    {
        public string Name => "fake workaround";
        public bool Available { get; init; } = true;
        public bool Active { get; private set; }
        public int Activations { get; private set; }
        public void Activate() { Active = true; Activations++; }
    }

    private static OpCheckReport Report(bool passed) => new(
        [new OpCheckResult("conv2d", "16->1 3x3/1 at 32x32", 3e-7, passed ? 1e-6 : double.NaN, OpCheck.Tolerance)], 2, TimeSpan.Zero);

    /// <summary>A check that fails with the default kernels and passes once the workaround is on (the faulty CPU).</summary>
    private static Func<OpCheckReport> FaultyUntilWorkaround(FakeWorkaround workaround, List<bool> calls) =>
        () => { calls.Add(workaround.Active); return Report(passed: workaround.Active); };

    [Fact]
    public void A_failing_check_switches_the_workaround_on_verifies_it_and_caches_the_decision()
    {
        using var cache = Fixtures.Temp();
        var workaround = new FakeWorkaround();
        var calls = new List<bool>();
        var status = new NumericsGuard(cache.Path, FaultyUntilWorkaround(workaround, calls), workaround, "machine-a").Ensure();

        Assert.Equal([false, true], calls); // checked with the defaults, then again with the workaround
        Assert.True(status.Healthy);
        Assert.True(status.WorkaroundActive);
        Assert.False(status.DefaultsPassed);
        Assert.False(status.FromCache);
        Assert.Contains("fake workaround", status.Detail);

        // The next process on this machine reads the decision and applies it without checking.
        var next = new FakeWorkaround();
        var nextCalls = new List<bool>();
        var cached = new NumericsGuard(cache.Path, FaultyUntilWorkaround(next, nextCalls), next, "machine-a").Ensure();
        Assert.Empty(nextCalls);
        Assert.True(cached.FromCache);
        Assert.True(next.Active);
        Assert.True(cached.WorkaroundActive);
    }

    [Fact]
    public void A_passing_check_leaves_the_default_kernels_alone()
    {
        using var cache = Fixtures.Temp();
        var workaround = new FakeWorkaround();
        int checks = 0;
        var status = new NumericsGuard(cache.Path, () => { checks++; return Report(passed: true); }, workaround, "machine-b").Ensure();
        Assert.Equal(1, checks);
        Assert.Equal(0, workaround.Activations);
        Assert.True(status.Healthy);
        Assert.True(status.DefaultsPassed);

        var again = new FakeWorkaround();
        var cached = new NumericsGuard(cache.Path, () => throw new InvalidOperationException("must not check"), again, "machine-b").Ensure();
        Assert.True(cached.FromCache);
        Assert.Equal(0, again.Activations);
    }

    [Fact]
    public void The_decision_is_per_machine()
    {
        using var cache = Fixtures.Temp();
        var faulty = new FakeWorkaround();
        new NumericsGuard(cache.Path, FaultyUntilWorkaround(faulty, []), faulty, "machine-a").Ensure();

        var other = new FakeWorkaround();
        int checks = 0;
        new NumericsGuard(cache.Path, () => { checks++; return Report(true); }, other, "machine-c").Ensure();
        Assert.Equal(1, checks);
        Assert.False(other.Active);
    }

    [Fact]
    public void A_check_that_fails_even_with_the_workaround_is_unhealthy_and_not_cached()
    {
        using var cache = Fixtures.Temp();
        var workaround = new FakeWorkaround();
        var guard = new NumericsGuard(cache.Path, () => Report(passed: false), workaround, "machine-d");
        var status = guard.Ensure();
        Assert.False(status.Healthy);
        Assert.True(workaround.Active); // the better of the two is kept on
        Assert.False(File.Exists(guard.CacheFile));
    }

    [Fact]
    public void Ensure_decides_once_per_guard_and_Recheck_checks_again()
    {
        using var cache = Fixtures.Temp();
        int checks = 0;
        var guard = new NumericsGuard(cache.Path, () => { checks++; return Report(true); }, new FakeWorkaround(), "machine-e");
        var first = guard.Ensure();
        Assert.Same(first, guard.Ensure());
        Assert.Equal(1, checks);
        guard.Recheck();
        Assert.Equal(2, checks);
    }

    [Fact]
    public void A_corrupt_cache_file_is_checked_again()
    {
        using var cache = Fixtures.Temp();
        int checks = 0;
        var guard = new NumericsGuard(cache.Path, () => { checks++; return Report(true); }, new FakeWorkaround(), "machine-f");
        File.WriteAllText(guard.CacheFile!, "{not json");
        Assert.True(guard.Ensure().Healthy);
        Assert.Equal(1, checks);
    }

    [Fact]
    public void An_unavailable_workaround_leaves_a_failing_check_unhealthy()
    {
        var workaround = new FakeWorkaround { Available = false };
        var status = new NumericsGuard(null, () => Report(false), workaround, "machine-g").Ensure();
        Assert.False(status.Healthy);
        Assert.Equal(0, workaround.Activations);
        Assert.Contains("not available", status.Detail);
    }

    [Fact]
    public void A_forced_workaround_is_switched_on_without_checking()
    {
        var workaround = new FakeWorkaround();
        var status = new NumericsGuard(null, () => throw new InvalidOperationException("must not check"), workaround, "machine-h", forceWorkaround: true).Ensure();
        Assert.True(workaround.Active);
        Assert.True(status.WorkaroundActive);
        Assert.Contains("DPRUNE_ONEDNN=off", status.Detail);
    }

    [Fact]
    public void A_NaN_error_fails_a_result()
    {
        Assert.False(new OpCheckResult("conv2d", "x", double.NaN, 0, OpCheck.Tolerance).Passed);
        Assert.False(new OpCheckResult("conv2d", "x", 0, 0.5, OpCheck.Tolerance).Passed);
        Assert.True(new OpCheckResult("conv2d", "x", 1e-6, 1e-6, OpCheck.Tolerance).Passed);
    }
}
