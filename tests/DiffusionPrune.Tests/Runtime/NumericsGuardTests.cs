using DiffusionPrune.Runtime;

namespace DiffusionPrune.Tests.Runtime;

/// <summary>The guard's decision, with an injected op check and workaround: no CPU fault is needed to test it.</summary>
public class NumericsGuardTests
{
    private sealed class FakeWorkaround(string name = "fake workaround") : IKernelWorkaround
    {
        public string Name => name;
        public bool Available { get; init; } = true;
        public bool Active { get; private set; }
        public int Activations { get; private set; }
        public void Activate() { Active = true; Activations++; }
        public IReadOnlyDictionary<string, string>? ChildEnvironment { get; init; }
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

    /// <summary>Writes what a first process on a faulty machine leaves behind: the defaults failed, oneDNN off passed.</summary>
    private static void FirstRunOnAFaultyMachine(string cache, string machine)
    {
        var off = new FakeWorkaround();
        var status = new NumericsGuard(cache, FaultyUntilWorkaround(off, []), off, machine, startupWorkaround: new FakeWorkaround("cap")).Ensure();
        Assert.True(status.Healthy);
    }

    [Fact]
    public void The_start_up_workaround_is_applied_only_where_the_machine_failed_before()
    {
        using var cache = Fixtures.Temp();
        var cap = new FakeWorkaround("cap");
        Assert.False(new NumericsGuard(cache.Path, () => Report(true), new FakeWorkaround(), "healthy", startupWorkaround: cap).ApplyAtStartup());
        Assert.False(cap.Active); // no cache yet: nothing to act on

        new NumericsGuard(cache.Path, () => Report(true), new FakeWorkaround(), "healthy").Ensure();
        Assert.False(new NumericsGuard(cache.Path, () => Report(true), new FakeWorkaround(), "healthy", startupWorkaround: cap).ApplyAtStartup());
        Assert.False(cap.Active); // a machine that passed keeps its default kernels
    }

    [Fact]
    public void On_a_machine_that_failed_before_the_start_up_cap_is_verified_once_and_oneDNN_stays_on()
    {
        using var cache = Fixtures.Temp();
        FirstRunOnAFaultyMachine(cache.Path, "faulty");

        // Second process: the cap goes on at start-up; the check (right only with the cap) runs once to verify it.
        var cap = new FakeWorkaround("cap");
        var off = new FakeWorkaround();
        int checks = 0;
        var guard = new NumericsGuard(cache.Path, () => { checks++; return Report(passed: cap.Active && !off.Active); }, off, "faulty", startupWorkaround: cap);
        Assert.True(guard.ApplyAtStartup());
        var status = guard.Ensure();
        Assert.Equal(1, checks);
        Assert.True(status.Healthy);
        Assert.True(status.WorkaroundActive);
        Assert.False(off.Active); // the cheaper cap is enough: oneDNN stays on
        Assert.Equal("cap", status.ActiveWorkaround);

        // Third process: the verdict is cached, so no check runs at all.
        var cap3 = new FakeWorkaround("cap");
        var guard3 = new NumericsGuard(cache.Path, () => throw new InvalidOperationException("must not check"), new FakeWorkaround(), "faulty", startupWorkaround: cap3);
        Assert.True(guard3.ApplyAtStartup());
        var third = guard3.Ensure();
        Assert.True(third.FromCache);
        Assert.True(third.Healthy);
        Assert.Equal("cap", third.ActiveWorkaround);
    }

    [Fact]
    public void A_start_up_cap_that_is_not_enough_falls_back_to_oneDNN_off_and_is_not_applied_again()
    {
        using var cache = Fixtures.Temp();
        FirstRunOnAFaultyMachine(cache.Path, "faulty");

        var cap = new FakeWorkaround("cap");
        var off = new FakeWorkaround();
        var calls = new List<bool>();
        var guard = new NumericsGuard(cache.Path, FaultyUntilWorkaround(off, calls), off, "faulty", startupWorkaround: cap);
        Assert.True(guard.ApplyAtStartup());
        var status = guard.Ensure();
        Assert.Equal([false, true], calls); // the cap failed, then oneDNN off passed
        Assert.True(status.Healthy);
        Assert.True(off.Active);
        Assert.Contains("cap", status.Detail);

        // The next process does not try the cap again: oneDNN off from the cache, no check.
        var cap3 = new FakeWorkaround("cap");
        var off3 = new FakeWorkaround();
        var guard3 = new NumericsGuard(cache.Path, () => throw new InvalidOperationException("must not check"), off3, "faulty", startupWorkaround: cap3);
        Assert.False(guard3.ApplyAtStartup());
        Assert.True(guard3.Ensure().Healthy);
        Assert.False(cap3.Active);
        Assert.True(off3.Active);
    }

    [Fact]
    public void On_a_new_machine_a_failing_child_check_caps_oneDNN_before_this_process_runs_it()
    {
        using var cache = Fixtures.Temp();
        var cap = new FakeWorkaround("cap");
        var off = new FakeWorkaround();
        int inProcess = 0;
        var guard = new NumericsGuard(cache.Path, () => { inProcess++; return Report(passed: cap.Active); }, off, "new-faulty", startupWorkaround: cap);

        Assert.True(guard.ApplyAtStartup(() => Report(passed: false))); // the child saw the defaults fail
        Assert.True(cap.Active);
        var status = guard.Ensure(); // verifies the cap once, in-process
        Assert.Equal(1, inProcess);
        Assert.True(status.Healthy);
        Assert.False(off.Active);
        Assert.Contains("checked in a child process", status.Detail);
    }

    [Fact]
    public void On_a_new_healthy_machine_the_child_check_is_cached_and_nothing_is_switched()
    {
        using var cache = Fixtures.Temp();
        var cap = new FakeWorkaround("cap");
        var guard = new NumericsGuard(cache.Path, () => throw new InvalidOperationException("must not check in-process"), new FakeWorkaround(), "new-healthy",
            startupWorkaround: cap);
        Assert.False(guard.ApplyAtStartup(() => Report(passed: true)));
        Assert.False(cap.Active);
        var status = guard.Ensure();
        Assert.True(status.FromCache);
        Assert.True(status.DefaultsPassed);
    }

    [Fact]
    public void A_child_that_could_not_run_leaves_the_decision_to_the_in_process_check()
    {
        using var cache = Fixtures.Temp();
        var cap = new FakeWorkaround("cap");
        var guard = new NumericsGuard(cache.Path, () => Report(passed: true), new FakeWorkaround(), "no-child", startupWorkaround: cap);
        Assert.False(guard.ApplyAtStartup(() => null));
        Assert.False(cap.Active);
        Assert.False(File.Exists(guard.CacheFile));
        Assert.False(guard.Ensure().FromCache); // checked now
    }

    [Fact]
    public void Doctor_on_a_faulty_machine_checks_the_start_up_cap_in_a_child_with_its_variable_and_records_the_verdict()
    {
        using var cache = Fixtures.Temp();
        var environment = new Dictionary<string, string> { ["CAP_VARIABLE"] = "SSE41" };
        var cap = new FakeWorkaround("cap") { ChildEnvironment = environment };
        var off = new FakeWorkaround();
        var doctor = new NumericsGuard(cache.Path, FaultyUntilWorkaround(off, []), off, "faulty", startupWorkaround: cap);
        Assert.True(doctor.Recheck().Healthy); // the defaults failed here; oneDNN off passed in-process
        IReadOnlyDictionary<string, string>? seen = null;
        var child = doctor.CheckStartupWorkaroundInChild(env => { seen = env; return Report(passed: true); });
        Assert.NotNull(child);
        Assert.Same(environment, seen);
        Assert.False(cap.Active); // the doctor's own process is not capped: the child was

        // The next program trusts the verdict: capped at start-up, no check at all.
        var cap2 = new FakeWorkaround("cap") { ChildEnvironment = environment };
        var next = new NumericsGuard(cache.Path, () => throw new InvalidOperationException("must not check"), new FakeWorkaround(), "faulty", startupWorkaround: cap2);
        Assert.True(next.ApplyAtStartup());
        var status = next.Ensure();
        Assert.Equal("cap", status.ActiveWorkaround);
        Assert.Contains("in a child process", status.Detail);

        // A cap that fails in the child is recorded too: the next program is not capped and turns oneDNN off.
        var failing = new NumericsGuard(cache.Path, FaultyUntilWorkaround(new FakeWorkaround(), []), new FakeWorkaround(), "faulty",
            startupWorkaround: new FakeWorkaround("cap") { ChildEnvironment = environment });
        failing.Recheck();
        Assert.False(failing.CheckStartupWorkaroundInChild(_ => Report(passed: false))!.Passed);
        var cap3 = new FakeWorkaround("cap") { ChildEnvironment = environment };
        Assert.False(new NumericsGuard(cache.Path, () => Report(true), new FakeWorkaround(), "faulty", startupWorkaround: cap3).ApplyAtStartup());
        Assert.False(cap3.Active);
    }

    [Fact]
    public void A_cap_inherited_from_the_parent_process_counts_as_the_start_up_workaround_and_oneDNN_stays_on()
    {
        using var cache = Fixtures.Temp();
        FirstRunOnAFaultyMachine(cache.Path, "faulty");
        var cap = new FakeWorkaround("cap");
        cap.Activate(); // the parent (a capped test host or Studio) passed its environment on
        var off = new FakeWorkaround();
        var guard = new NumericsGuard(cache.Path, () => Report(passed: cap.Active && !off.Active), off, "faulty", startupWorkaround: cap);
        Assert.True(guard.ApplyAtStartup());
        var status = guard.Ensure();
        Assert.True(status.Healthy);
        Assert.False(off.Active);
        Assert.Equal("cap", status.ActiveWorkaround);
    }

    [Fact]
    public void Doctor_on_a_healthy_machine_starts_no_child()
    {
        using var cache = Fixtures.Temp();
        var cap = new FakeWorkaround("cap") { ChildEnvironment = new Dictionary<string, string> { ["CAP_VARIABLE"] = "SSE41" } };
        var doctor = new NumericsGuard(cache.Path, () => Report(passed: true), new FakeWorkaround(), "healthy", startupWorkaround: cap);
        doctor.Recheck();
        Assert.Null(doctor.CheckStartupWorkaroundInChild(_ => throw new InvalidOperationException("must not start a child")));
    }

    [Fact]
    public void A_NaN_error_fails_a_result()
    {
        Assert.False(new OpCheckResult("conv2d", "x", double.NaN, 0, OpCheck.Tolerance).Passed);
        Assert.False(new OpCheckResult("conv2d", "x", 0, 0.5, OpCheck.Tolerance).Passed);
        Assert.True(new OpCheckResult("conv2d", "x", 1e-6, 1e-6, OpCheck.Tolerance).Passed);
    }
}

/// <summary>The real start-up workaround, in a real dprune process: the cap must reach oneDNN before it first runs.</summary>
public class StartupWorkaroundTests
{
    [Fact]
    public void On_a_machine_cached_as_faulty_dprune_caps_oneDNN_at_start_up_verifies_it_and_still_matches_diffusers()
    {
        using var cache = Fixtures.Temp();
        string file = Path.Combine(cache.Path, $"numerics-{NumericsGuard.MachineFingerprint()}.json");
        File.WriteAllText(file, """{"NeedsWorkaround":true,"Detail":"default kernels: simulated failure","StartupWorkaround":null}""");
        var environment = new Dictionary<string, string> { ["DPRUNE_CACHE_DIR"] = cache.Path, ["ONEDNN_VERBOSE"] = "1" };

        var (code, stdout, stderr) = Cli.CliTests.DprunWith(environment, "forward", "--model", Fixtures.Diffusers("unet2d-small", "model"),
            "--input", Fixtures.Diffusers("unet2d-small", "io.safetensors"), "--output", cache.File("out.safetensors"), "--device", "cpu");

        Assert.True(code == 0, stderr);
        Assert.Contains("isa:Intel SSE4.1", stdout); // oneDNN's own report of the ISA it runs
        Assert.Contains("\"StartupWorkaround\":\"passed\"", File.ReadAllText(file));
        using var output = DiffusionPrune.Formats.SafetensorsFile.Open(cache.File("out.safetensors"));
        using var io = DiffusionPrune.Formats.SafetensorsFile.Open(Fixtures.Diffusers("unet2d-small", "io.safetensors"));
        using var actual = output.Read("output");
        using var expected = io.ReadFloat("output");
        Assert.True(Fixtures.RelativeError(actual, expected) <= 1e-4);
    }

    [Fact]
    public void The_hidden_child_check_prints_a_report_that_parses_and_a_new_machine_caches_it()
    {
        // Through the parent's side, which clears a cap this test host may run under (a faulty CPU): the defaults are checked.
        var report = ChildKernelCheck.Run(Cli.CliTests.DprunStartInfo("__check-kernels"), TimeSpan.FromMinutes(2));
        Assert.NotNull(report);
        Assert.Equal(OpCheck.RunQuick().Results.Count, report!.Results.Count); // this machine's defaults: right or not, as the CPU is

        using var cache = Fixtures.Temp(); // a machine dprune has never run on
        var (code, _, stderr) = Cli.CliTests.DprunWith(new Dictionary<string, string> { ["DPRUNE_CACHE_DIR"] = cache.Path }, "info", "--model",
            Fixtures.Diffusers("unet2d-small", "model"));
        Assert.True(code == 0, stderr);
        string decision = File.ReadAllText(Path.Combine(cache.Path, $"numerics-{NumericsGuard.MachineFingerprint()}.json"));
        Assert.Contains("checked in a child process", decision);
        // The new machine's decision is the child's verdict, even when this test host runs capped (a faulty CPU).
        Assert.Contains($"\"NeedsWorkaround\":{(!report.Passed).ToString().ToLowerInvariant()}", decision);
    }

    [Fact]
    public void The_native_environment_is_what_native_code_reads()
    {
        string name = $"DPRUNE_TEST_{Guid.NewGuid():N}";
        Assert.Null(NativeEnvironment.Get(name));
        NativeEnvironment.Set(name, "SSE41");
        Assert.Equal("SSE41", NativeEnvironment.Get(name));
        Assert.Equal("SSE41", Environment.GetEnvironmentVariable(name));
    }
}
