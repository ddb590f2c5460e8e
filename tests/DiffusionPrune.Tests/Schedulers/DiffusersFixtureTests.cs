using DiffusionPrune.Schedulers;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Schedulers;

/// <summary>Every tensor of tests/fixtures/diffusers/schedulers, compared with what diffusers computed.</summary>
public sealed class DiffusersFixtureTests(SchedulerFixture fixture, ITestOutputHelper output) : IClassFixture<SchedulerFixture>
{
    public static TheoryData<string> BetaSchedules => new() { "linear", "scaled_linear", "squaredcos_cap_v2" };

    [Theory]
    [MemberData(nameof(BetaSchedules))]
    public void BetasAndAlphasCumprodMatchDiffusers(string schedule)
    {
        using var scheduler = new DDPMScheduler(new SchedulerConfig { BetaSchedule = schedule });
        using var betas = fixture.Float($"betas_{schedule}");
        using var alphasCumprod = fixture.Float($"alphas_cumprod_{schedule}");
        double betaError = TensorAssert.Close(betas, scheduler.Betas, $"betas_{schedule}");
        double cumprodError = TensorAssert.Close(alphasCumprod, scheduler.AlphasCumprod, $"alphas_cumprod_{schedule}");
        output.WriteLine($"{schedule}: betas max error {betaError:E3} (bit-exact: {TensorAssert.BitExact(betas, scheduler.Betas)}), " +
                         $"alphas_cumprod max error {cumprodError:E3} (bit-exact: {TensorAssert.BitExact(alphasCumprod, scheduler.AlphasCumprod)})");
    }

    [Theory]
    [InlineData("leading", 10)]
    [InlineData("leading", 25)]
    [InlineData("leading", 50)]
    [InlineData("trailing", 10)]
    [InlineData("trailing", 25)]
    [InlineData("trailing", 50)]
    [InlineData("linspace", 10)]
    [InlineData("linspace", 25)]
    [InlineData("linspace", 50)]
    public void DdimTimestepsEqualDiffusers(string spacing, int steps)
    {
        // README: leading uses steps_offset 1.
        var config = new SchedulerConfig { ClassName = SchedulerConfig.DDIMClassName, TimestepSpacing = spacing, StepsOffset = spacing == "leading" ? 1 : 0 };
        using var scheduler = new DDIMScheduler(config);
        scheduler.SetTimesteps(steps);
        Assert.Equal(fixture.Longs($"ddim_timesteps_{spacing}_{steps}"), scheduler.Timesteps);
    }

    [Theory]
    [InlineData("epsilon", false)]
    [InlineData("epsilon", true)]
    [InlineData("v_prediction", false)]
    [InlineData("v_prediction", true)]
    [InlineData("sample", false)]
    [InlineData("sample", true)]
    public void DdimStepMatchesDiffusers(string predictionType, bool clip)
    {
        var caseName = $"ddim_step_{predictionType}_clip{(clip ? 1 : 0)}";
        var stepCase = fixture.Case.GetProperty(caseName);
        var config = fixture.Config("ddim_config") with { PredictionType = predictionType, ClipSample = clip };
        using var scheduler = new DDIMScheduler(config);
        scheduler.SetTimesteps(stepCase.GetProperty("num_inference_steps").GetInt32());
        using var scope = torch.NewDisposeScope();

        var result = scheduler.Step(fixture.Float("step_model_output"), stepCase.GetProperty("timestep").GetInt64(), fixture.Float("step_sample"));

        double prevError = TensorAssert.Close(fixture.Float($"{caseName}_prev"), result.PrevSample, $"{caseName}_prev");
        double x0Error = TensorAssert.Close(fixture.Float($"{caseName}_x0"), result.PredOriginalSample, $"{caseName}_x0");
        output.WriteLine($"{caseName}: prev max error {prevError:E3}, x0 max error {x0Error:E3}");
    }

    [Theory]
    [InlineData("epsilon", 999)]
    [InlineData("epsilon", 500)]
    [InlineData("epsilon", 1)]
    [InlineData("epsilon", 0)]
    [InlineData("v_prediction", 999)]
    [InlineData("v_prediction", 500)]
    [InlineData("v_prediction", 1)]
    [InlineData("v_prediction", 0)]
    public void DdpmPosteriorMeanMatchesDiffusers(string predictionType, long timestep)
    {
        var config = fixture.Config("ddpm_config") with { PredictionType = predictionType };
        using var scheduler = new DDPMScheduler(config);
        using var scope = torch.NewDisposeScope();
        var sample = fixture.Float("step_sample");

        // Zero variance noise: prev_sample is the posterior mean.
        var result = scheduler.Step(fixture.Float("step_model_output"), timestep, sample, varianceNoise: torch.zeros_like(sample));

        var caseName = $"ddpm_step_{predictionType}_t{timestep}";
        double meanError = TensorAssert.Close(fixture.Float($"{caseName}_mean"), result.PrevSample, $"{caseName}_mean");
        double x0Error = TensorAssert.Close(fixture.Float($"{caseName}_x0"), result.PredOriginalSample, $"{caseName}_x0");
        output.WriteLine($"{caseName}: mean max error {meanError:E3}, x0 max error {x0Error:E3}");
    }

    [Theory]
    [InlineData(999)]
    [InlineData(500)]
    [InlineData(1)]
    [InlineData(0)]
    public void DdpmVarianceMatchesDiffusers(long timestep)
    {
        using var scheduler = new DDPMScheduler(fixture.Config("ddpm_config"));
        using var variance = scheduler.GetVariance(timestep);
        double expected = fixture.Case.GetProperty($"ddpm_var_t{timestep}").GetDouble();
        double actual = variance.item<float>();
        output.WriteLine($"ddpm_var_t{timestep}: ours {actual:R}, diffusers {expected:R}, relative error {Math.Abs(actual - expected) / expected:E3}");
        Assert.True(Math.Abs(actual - expected) <= 1e-6 * Math.Abs(expected), $"variance at t={timestep}: ours {actual:R}, diffusers {expected:R}");
    }

    [Fact]
    public void DpmSolverPlusPlus2MTenStepRunMatchesDiffusers()
    {
        var run = fixture.Case.GetProperty("dpmpp2m");
        var config = fixture.Config("dpmpp2m", "config");
        Assert.Equal(double.NegativeInfinity, config.LambdaMinClipped);
        using var scheduler = new DPMSolverMultistepScheduler(config);
        scheduler.SetTimesteps(run.GetProperty("num_inference_steps").GetInt32());
        Assert.Equal(fixture.Longs("dpmpp2m_timesteps_10"), scheduler.Timesteps);

        var x = fixture.Float("step_sample");
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
        {
            using var scope = torch.NewDisposeScope();
            // The stand-in model of case.json: eps = tanh(x * (0.5 + 0.1 * i)).
            var eps = (x * (0.5 + 0.1 * i)).tanh();
            var next = scheduler.Step(eps, timesteps[i], x).PrevSample.MoveToOuterDisposeScope();
            x.Dispose();
            x = next;
        }

        using var reference = fixture.Float("dpmpp2m_final");
        double error = TensorAssert.Close(reference, x, "dpmpp2m_final");
        output.WriteLine($"dpmpp2m_final: max error {error:E3} (bit-exact: {TensorAssert.BitExact(reference, x)})");
        x.Dispose();
    }

    /// <summary>A tensor added to the fixture later must get a test: this lists the ones the tests above read.</summary>
    [Fact]
    public void EveryFixtureTensorIsCovered()
    {
        var covered = new HashSet<string> { "step_model_output", "step_sample", "dpmpp2m_timesteps_10", "dpmpp2m_final" };
        foreach (var schedule in new[] { "linear", "scaled_linear", "squaredcos_cap_v2" })
        {
            covered.Add($"betas_{schedule}");
            covered.Add($"alphas_cumprod_{schedule}");
        }
        foreach (var spacing in new[] { "leading", "trailing", "linspace" })
            foreach (var steps in new[] { 10, 25, 50 })
                covered.Add($"ddim_timesteps_{spacing}_{steps}");
        foreach (var prediction in new[] { "epsilon", "v_prediction", "sample" })
            foreach (var clip in new[] { 0, 1 })
            {
                covered.Add($"ddim_step_{prediction}_clip{clip}_prev");
                covered.Add($"ddim_step_{prediction}_clip{clip}_x0");
            }
        foreach (var prediction in new[] { "epsilon", "v_prediction" })
            foreach (var t in new[] { 999, 500, 1, 0 })
            {
                covered.Add($"ddpm_step_{prediction}_t{t}_mean");
                covered.Add($"ddpm_step_{prediction}_t{t}_x0");
            }
        Assert.Empty(fixture.Tensors.Entries.Keys.Where(k => !covered.Contains(k)).Order());
        Assert.Empty(covered.Where(k => !fixture.Tensors.Entries.ContainsKey(k)).Order());
    }
}
