using DiffusionPrune.Runtime;
using DiffusionPrune.Studio.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using SystemCheckPage = DiffusionPrune.Studio.Components.Pages.SystemCheck.SystemCheck;

namespace DiffusionPrune.Studio.Tests;

public sealed class SystemCheckPageTests : MudTestContext
{
    private int _runs;

    private static DoctorReport Report(bool convBackwardWrong)
    {
        var results = new List<OpCheckResult>
        {
            new("conv2d", "16->1 3x3/1 at 32x32", 5.5e-7, convBackwardWrong ? double.NaN : 1.1e-6, OpCheck.Tolerance),
            new("group_norm", "[4, 64, 16, 16], 32 groups", 9.5e-8, 1.7e-7, OpCheck.Tolerance),
        };
        var full = new OpCheckReport(results, 2, TimeSpan.FromSeconds(0.8));
        var guard = new NumericsStatus("0123456789abcdef", FromCache: false, DefaultsPassed: !convBackwardWrong,
            WorkaroundActive: convBackwardWrong, Healthy: !convBackwardWrong, "11 op checks passed", full);
        return new DoctorReport(new CpuInfo("Test CPU 9000", ["fpu", "avx2", "avx512f"]), "2.10.0.0", "0.107.0", "3.7.1", "AVX512",
            "1.31.1", 2, OneDnnEnabled: !convBackwardWrong, guard, full);
    }

    private void UseCheck(Func<DoctorReport> run) =>
        Context.Services.AddSingleton(new SystemCheckService(() => { Interlocked.Increment(ref _runs); return run(); }));

    [Fact]
    public void The_first_visit_checks_and_shows_the_same_facts_and_ops_as_dprune_doctor()
    {
        var report = Report(convBackwardWrong: false);
        UseCheck(() => report);
        var page = Context.Render<SystemCheckPage>();

        page.WaitForAssertion(() => Assert.Contains("passed: 2 ops", page.Find(".verdict").TextContent), WaitTimeout);
        var facts = page.Find(".facts").TextContent;
        foreach (var (label, value) in report.Facts())
        {
            Assert.Contains(label, facts);
            Assert.Contains(value, facts);
        }
        Assert.Contains("avx512f", facts);
        var rows = page.FindAll(".ops tbody tr");
        Assert.Equal(2, rows.Count);
        Assert.Contains("5.5E-007", rows[0].TextContent);
        Assert.Empty(page.FindAll(".op-fail"));
        Assert.Equal(1, _runs);
    }

    [Fact]
    public void A_failing_op_is_shown_as_a_failure_with_its_NaN()
    {
        UseCheck(() => Report(convBackwardWrong: true));
        var page = Context.Render<SystemCheckPage>();

        page.WaitForAssertion(() => Assert.StartsWith("FAILED", page.Find(".verdict").TextContent.Trim()), WaitTimeout);
        Assert.Single(page.FindAll(".op-fail"));
        Assert.Contains("NaN", page.FindAll(".ops tbody tr")[0].TextContent);
        Assert.Contains("active", page.Find(".facts").TextContent);
    }

    [Fact]
    public void Check_again_runs_the_check_once_more_and_a_revisit_does_not()
    {
        UseCheck(() => Report(convBackwardWrong: false));
        var page = Context.Render<SystemCheckPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".verdict")), WaitTimeout);
        page.WaitForAssertion(() => Assert.False(page.Find("button.check-again").HasAttribute("disabled")), WaitTimeout);

        page.Find("button.check-again").Click();
        page.WaitForAssertion(() => Assert.Equal(2, _runs), WaitTimeout);

        Context.Render<SystemCheckPage>(); // a second page (or a revisit) shows the last report
        Assert.Equal(2, _runs);
    }

    [Fact]
    public void A_check_that_cannot_run_says_why()
    {
        UseCheck(() => throw new DllNotFoundException("libtorch_cpu.so not found"));
        var page = Context.Render<SystemCheckPage>();
        page.WaitForAssertion(() => Assert.Contains("libtorch_cpu.so not found", page.Find(".check-error").TextContent), WaitTimeout);
    }
}
