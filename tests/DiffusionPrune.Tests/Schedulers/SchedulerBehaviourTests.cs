using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Schedulers;

/// <summary>Cases the fixtures do not cover, with diffusers' result worked out from its source.</summary>
public sealed class SchedulerBehaviourTests(SchedulerFixture fixture) : IClassFixture<SchedulerFixture>
{
    private static SchedulerConfig Ddim(string spacing = "leading", int offset = 0, bool clip = false, string prediction = "epsilon") =>
        SchedulerConfig.Defaults(SchedulerConfig.DDIMClassName) with
        {
            TimestepSpacing = spacing, StepsOffset = offset, ClipSample = clip, PredictionType = prediction,
        };

    private static SchedulerConfig Dpm(string spacing = "linspace", int order = 2) =>
        SchedulerConfig.Defaults(SchedulerConfig.DPMSolverMultistepClassName) with { TimestepSpacing = spacing, SolverOrder = order };

    private static Tensor StandInModel(Tensor x, int i) => (x * (0.5 + 0.1 * i)).tanh();

    // ---- timesteps ------------------------------------------------------------------------------------------

    [Fact]
    public void DdimTrailingAndLinspaceIgnoreStepsOffset()
    {
        using var withOffset = new DDIMScheduler(Ddim("trailing", offset: 1));
        using var linspace = new DDIMScheduler(Ddim("linspace", offset: 1));
        withOffset.SetTimesteps(10);
        linspace.SetTimesteps(10);

        Assert.Equal(new long[] { 999, 899, 799, 699, 599, 499, 399, 299, 199, 99 }, withOffset.Timesteps);
        Assert.Equal(fixture.Longs("ddim_timesteps_linspace_10"), linspace.Timesteps);
    }

    [Fact]
    public void DdimLeadingWithoutOffsetEndsAtZero()
    {
        using var scheduler = new DDIMScheduler(Ddim("leading", offset: 0));
        scheduler.SetTimesteps(3);

        // 1000 // 3 = 333: [666, 333, 0]
        Assert.Equal(new long[] { 666, 333, 0 }, scheduler.Timesteps);
        Assert.Equal(333 - 333, scheduler.PreviousTimestep(333));
    }

    [Fact]
    public void DdimTrailingKeepsNumpysExtraTimestepFor61Steps()
    {
        // np.arange(1000, 0, -1000/61) has ceil(61.00000000000001) = 62 values, the last ≈ -5.7e-13, which rounds to 0:
        // diffusers' timesteps end with 0 - 1 = -1.
        using var scheduler = new DDIMScheduler(Ddim("trailing"));
        scheduler.SetTimesteps(61);

        var timesteps = scheduler.Timesteps;
        Assert.Equal(62, timesteps.Length);
        Assert.Equal(999, timesteps[0]);
        Assert.Equal(15, timesteps[^2]);
        Assert.Equal(-1, timesteps[^1]);
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
    public void DdpmSetTimestepsIsDdims(string spacing, int steps)
    {
        // DDPMScheduler.set_timesteps carries the same three spacings as DDIM's.
        var config = SchedulerConfig.Defaults(SchedulerConfig.DDPMClassName) with { TimestepSpacing = spacing, StepsOffset = spacing == "leading" ? 1 : 0 };
        using var scheduler = new DDPMScheduler(config);
        scheduler.SetTimesteps(steps);

        Assert.Equal(fixture.Longs($"ddim_timesteps_{spacing}_{steps}"), scheduler.Timesteps);
    }

    [Fact]
    public void DdpmPreviousTimestepFollowsTheSchedule()
    {
        using var scheduler = new DDPMScheduler(SchedulerConfig.Defaults(SchedulerConfig.DDPMClassName));
        Assert.Equal(499, scheduler.PreviousTimestep(500)); // before SetTimesteps: t - 1

        scheduler.SetTimesteps(10);

        Assert.Equal(800, scheduler.PreviousTimestep(900));
        Assert.Equal(-1, scheduler.PreviousTimestep(0));
        Assert.Throws<ArgumentException>(() => scheduler.PreviousTimestep(950));
    }

    [Fact]
    public void DpmSolverLeadingAndTrailingSpacings()
    {
        using var leading = new DPMSolverMultistepScheduler(Dpm("leading") with { StepsOffset = 1 });
        using var trailing = new DPMSolverMultistepScheduler(Dpm("trailing"));
        leading.SetTimesteps(10);
        trailing.SetTimesteps(10);

        // leading: step_ratio = 1000 // 11 = 90; (arange(11) * 90)[::-1][:-1] + 1
        Assert.Equal(new long[] { 901, 811, 721, 631, 541, 451, 361, 271, 181, 91 }, leading.Timesteps);
        // trailing: arange(1000, 0, -100) - 1
        Assert.Equal(new long[] { 999, 899, 799, 699, 599, 499, 399, 299, 199, 99 }, trailing.Timesteps);
        Assert.Equal(11, trailing.Sigmas.Length);
        Assert.Equal(0f, trailing.Sigmas[^1]);
    }

    [Fact]
    public void DpmSolverSigmaMinFinalSigmaIsTheFirstTrainingSigma()
    {
        using var scheduler = new DPMSolverMultistepScheduler(Dpm() with { FinalSigmasType = "sigma_min" });
        scheduler.SetTimesteps(10);

        float alpha0 = scheduler.AlphasCumprod[0].item<float>();
        Assert.Equal(MathF.Sqrt((1f - alpha0) / alpha0), scheduler.Sigmas[^1]);
    }

    [Fact]
    public void SetTimestepsRejectsImpossibleStepCounts()
    {
        using var scheduler = new DDIMScheduler(Ddim());

        Assert.Throws<ArgumentOutOfRangeException>(() => scheduler.SetTimesteps(0));
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => scheduler.SetTimesteps(1001));
        Assert.Contains("1001", error.Message);
    }

    // ---- DDIM step ------------------------------------------------------------------------------------------

    [Fact]
    public void DdimStepBeforeSetTimestepsIsAClearError()
    {
        using var scheduler = new DDIMScheduler(Ddim());
        using var x = torch.zeros(1, 1, 2, 2);

        var error = Assert.Throws<InvalidOperationException>(() => scheduler.Step(x, 999, x));
        Assert.Contains("SetTimesteps", error.Message);
    }

    [Fact]
    public void DdimLastStepWithAlphaSetToOneReturnsTheX0Prediction()
    {
        using var scheduler = new DDIMScheduler(Ddim());
        scheduler.SetTimesteps(10);
        using var scope = torch.NewDisposeScope();

        // t = 0, prev = -100: ᾱ_prev = 1, so x_prev = 1 · x0 + sqrt(1 - 1) · ε.
        var result = scheduler.Step(fixture.Float("step_model_output"), 0, fixture.Float("step_sample"));

        Assert.True(TensorAssert.BitExact(result.PredOriginalSample, result.PrevSample));
    }

    [Fact]
    public void DdimWithEtaAddsTheScaledNoiseGivenOrDrawnFromTheGenerator()
    {
        using var scheduler = new DDIMScheduler(Ddim(), eta: 1.0);
        using var deterministic = new DDIMScheduler(Ddim());
        scheduler.SetTimesteps(20);
        deterministic.SetTimesteps(20);
        using var scope = torch.NewDisposeScope();
        var modelOutput = fixture.Float("step_model_output");
        var sample = fixture.Float("step_sample");
        var noise = torch.randn(sample.shape, generator: new torch.Generator(3));

        var withNoise = scheduler.Step(modelOutput, 700, sample, noise).PrevSample;
        var withZeroNoise = scheduler.Step(modelOutput, 700, sample, torch.zeros_like(sample)).PrevSample;

        // σ_t = η · sqrt((1 − ᾱ_650) / (1 − ᾱ_700) · (1 − ᾱ_700 / ᾱ_650)), computed here in float64.
        double a = scheduler.AlphasCumprod[700].item<float>(), aPrev = scheduler.AlphasCumprod[650].item<float>();
        double sigma = Math.Sqrt((1 - aPrev) / (1 - a) * (1 - a / aPrev));
        TensorAssert.Close(noise * sigma, withNoise - withZeroNoise, "σ_t · noise");
        // η > 0 also shrinks the direction term, so the zero-noise result is not η = 0 DDIM.
        var etaZero = deterministic.Step(modelOutput, 700, sample).PrevSample;
        Assert.False(TensorAssert.BitExact(etaZero, withZeroNoise));

        var drawn1 = scheduler.Step(modelOutput, 700, sample, generator: new torch.Generator(7)).PrevSample;
        var drawn2 = scheduler.Step(modelOutput, 700, sample, generator: new torch.Generator(7)).PrevSample;
        Assert.True(TensorAssert.BitExact(drawn1, drawn2)); // own generators: parallel tests draw from the global one
        Assert.Throws<ArgumentException>(() => scheduler.Step(modelOutput, 700, sample, noise, torch.manual_seed(7)));
    }

    [Fact]
    public void DdimWithEtaOneAndEveryTimestepIsDdpm()
    {
        // With n = T, η = 1 and no clipping, DDIM's step is DDPM's posterior sample (same noise) up to float rounding;
        // near t = 0 DDIM's sqrt(1 − ᾱ_prev − σ²) cancels in float32, hence 1e-4.
        using var ddim = new DDIMScheduler(Ddim(), eta: 1.0);
        using var ddpm = new DDPMScheduler(SchedulerConfig.Defaults(SchedulerConfig.DDPMClassName) with { ClipSample = false });
        ddim.SetTimesteps(1000);
        using var scope = torch.NewDisposeScope();
        var modelOutput = fixture.Float("step_model_output");
        var sample = fixture.Float("step_sample");
        var noise = torch.randn(sample.shape, generator: new torch.Generator(5));

        foreach (long t in new long[] { 999, 500, 10 })
        {
            var fromDdim = ddim.Step(modelOutput, t, sample, noise).PrevSample;
            var fromDdpm = ddpm.Step(modelOutput, t, sample, noise).PrevSample;
            TensorAssert.Close(fromDdpm, fromDdim, $"DDIM(η=1) vs DDPM at t={t}", relative: 1e-4);
        }
    }

    [Theory]
    [InlineData("epsilon")]
    [InlineData("v_prediction")]
    [InlineData("sample")]
    public void DdimAndDdpmStepsArePureAndDifferentiable(string prediction)
    {
        using var ddim = new DDIMScheduler(Ddim(prediction: prediction));
        using var ddpm = new DDPMScheduler(SchedulerConfig.Defaults(SchedulerConfig.DDPMClassName) with { PredictionType = prediction, ClipSample = false });
        ddim.SetTimesteps(20);
        using var scope = torch.NewDisposeScope();
        var sample = fixture.Float("step_sample");
        var noise = torch.zeros_like(sample);

        foreach (IDiffusionScheduler scheduler in new IDiffusionScheduler[] { ddim, ddpm })
        {
            var modelOutput = fixture.Float("step_model_output").requires_grad_(true);
            var first = scheduler.Step(modelOutput, 700, sample, noise).PrevSample;
            var second = scheduler.Step(modelOutput, 700, sample, noise).PrevSample;
            Assert.True(TensorAssert.BitExact(first, second));

            // x_prev is affine in the model output: d(sum x_prev)/d(model output) is one constant everywhere.
            first.sum().backward();
            var grad = modelOutput.grad;
            Assert.NotNull(grad);
            float g = grad!.flatten()[0].item<float>();
            Assert.NotEqual(0f, g);
            TensorAssert.Close(torch.full_like(grad, g), grad, $"{scheduler.GetType().Name} gradient");
        }
    }

    [Fact]
    public void ModelOutputWithLearnedSigmaChannelsMustBeSplitByTheCaller()
    {
        using var scheduler = new DDIMScheduler(Ddim());
        scheduler.SetTimesteps(10);
        using var sample = torch.zeros(1, 4, 2, 2);
        using var modelOutput = torch.zeros(1, 8, 2, 2);

        var error = Assert.Throws<ArgumentException>(() => scheduler.Step(modelOutput, 900, sample));
        Assert.Contains("modelOutput[:, :C]", error.Message);
    }

    // ---- DDPM variance types --------------------------------------------------------------------------------

    [Fact]
    public void DdpmLearnedRangeSplitsTheOutputAndInterpolatesTheLogVariance()
    {
        var config = SchedulerConfig.Defaults(SchedulerConfig.DDPMClassName) with { VarianceType = "learned_range", ClipSample = false };
        using var learned = new DDPMScheduler(config);
        using var fixedSmall = new DDPMScheduler(config with { VarianceType = "fixed_small" });
        using var fixedLarge = new DDPMScheduler(config with { VarianceType = "fixed_large" });
        using var scope = torch.NewDisposeScope();
        var epsilon = fixture.Float("step_model_output");
        var sample = fixture.Float("step_sample");
        var ones = torch.ones_like(sample);
        const long t = 500;

        // v = -1: frac 0, the fixed_small variance; v = +1: frac 1, β_t (fixed_large).
        var atSmall = learned.Step(torch.cat([epsilon, -ones], 1), t, sample, ones);
        var atLarge = learned.Step(torch.cat([epsilon, ones], 1), t, sample, ones);

        TensorAssert.Close(fixedSmall.Step(epsilon, t, sample, ones).PrevSample, atSmall.PrevSample, "learned_range v=-1 vs fixed_small");
        TensorAssert.Close(fixedLarge.Step(epsilon, t, sample, ones).PrevSample, atLarge.PrevSample, "learned_range v=+1 vs fixed_large");
        TensorAssert.Close(fixedSmall.Step(epsilon, t, sample, torch.zeros_like(sample)).PredOriginalSample, atSmall.PredOriginalSample, "x0");
    }

    [Fact]
    public void DdpmNullVarianceTypeBehavesAsFixedSmall()
    {
        var config = SchedulerConfig.Parse("""{"_class_name": "DDPMScheduler", "variance_type": null}""");
        using var nullType = new DDPMScheduler(config);
        using var fixedSmall = new DDPMScheduler(SchedulerConfig.Defaults(SchedulerConfig.DDPMClassName));
        using var scope = torch.NewDisposeScope();
        var sample = fixture.Float("step_sample");
        var noise = torch.ones_like(sample);

        var a = nullType.Step(fixture.Float("step_model_output"), 500, sample, noise).PrevSample;
        var b = fixedSmall.Step(fixture.Float("step_model_output"), 500, sample, noise).PrevSample;

        Assert.True(TensorAssert.BitExact(b, a));
    }

    [Fact]
    public void DdpmAddsNoNoiseAtTimestepZero()
    {
        using var scheduler = new DDPMScheduler(SchedulerConfig.Defaults(SchedulerConfig.DDPMClassName));
        using var scope = torch.NewDisposeScope();
        var sample = fixture.Float("step_sample");

        var withNoise = scheduler.Step(fixture.Float("step_model_output"), 0, sample, torch.ones_like(sample)).PrevSample;
        var withoutNoise = scheduler.Step(fixture.Float("step_model_output"), 0, sample, torch.zeros_like(sample)).PrevSample;

        Assert.True(TensorAssert.BitExact(withoutNoise, withNoise));
    }

    // ---- training helpers -----------------------------------------------------------------------------------

    [Fact]
    public void AddNoiseAndVelocityInvertThroughTheVPredictionFormula()
    {
        using var ddpm = new DDPMScheduler(SchedulerConfig.Defaults(SchedulerConfig.DDPMClassName) with { PredictionType = "v_prediction", ClipSample = false });
        using var scope = torch.NewDisposeScope();
        var x0 = fixture.Float("step_sample");
        var noise = fixture.Float("step_model_output");
        var timesteps = torch.tensor(new long[] { 999, 500, 3 });

        var noisy = ddpm.AddNoise(x0, noise, timesteps);
        var velocity = ddpm.GetVelocity(x0, noise, timesteps);

        for (int b = 0; b < 3; b++)
        {
            long t = timesteps[b].item<long>();
            double a = ddpm.AlphasCumprod[t].item<float>();
            TensorAssert.Close(x0[b] * Math.Sqrt(a) + noise[b] * Math.Sqrt(1 - a), noisy[b], $"add_noise at t={t}");
            // Feeding the true v to a v-prediction step recovers x0 exactly up to rounding.
            var step = ddpm.Step(velocity[b].unsqueeze(0), t, noisy[b].unsqueeze(0), torch.zeros_like(x0[b].unsqueeze(0)));
            TensorAssert.Close(x0[b].unsqueeze(0), step.PredOriginalSample, $"x0 from v at t={t}");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => ddpm.AddNoise(x0, noise, torch.tensor(new long[] { 0, 1, 1000 })));
    }

    [Fact]
    public void AddNoiseIsDifferentiableInTheCleanSample()
    {
        using var ddim = new DDIMScheduler(Ddim());
        using var scope = torch.NewDisposeScope();
        var x0 = fixture.Float("step_sample").requires_grad_(true);

        ddim.AddNoise(x0, torch.zeros_like(x0), torch.tensor(100L)).sum().backward();

        float expected = MathF.Sqrt(ddim.AlphasCumprod[100].item<float>());
        TensorAssert.Close(torch.full_like(x0, expected), x0.grad!, "d add_noise / d x0");
    }

    [Fact]
    public void ZeroTerminalSnrRescaleEndsAtAlphaBarZeroAndKeepsTheFirst()
    {
        using var plain = new DDIMScheduler(Ddim("trailing", prediction: "v_prediction"));
        using var rescaled = new DDIMScheduler(Ddim("trailing", prediction: "v_prediction") with { RescaleBetasZeroSnr = true });
        using var dpm = new DPMSolverMultistepScheduler(Dpm("trailing") with { RescaleBetasZeroSnr = true, PredictionType = "v_prediction" });

        // The last sqrt(ᾱ) is shifted to exactly 0: β_T = 1 and ᾱ_T = 0; ᾱ_0 is scaled back to (nearly) its old value.
        Assert.Equal(1f, rescaled.Betas[-1].item<float>());
        Assert.Equal(0f, rescaled.AlphasCumprod[-1].item<float>());
        Assert.Equal(plain.AlphasCumprod[0].item<float>(), rescaled.AlphasCumprod[0].item<float>(), 1e-6f);
        // DPM-Solver replaces ᾱ_T = 0 by 2^-24 so that σ_T stays finite.
        Assert.Equal(MathF.Pow(2, -24), dpm.AlphasCumprod[-1].item<float>());
        dpm.SetTimesteps(10);
        Assert.True(float.IsFinite(dpm.Sigmas[0]));

        // A v-prediction step from pure noise at t = 999 is finite (x0 = −v there).
        rescaled.SetTimesteps(10);
        using var scope = torch.NewDisposeScope();
        var v = fixture.Float("step_model_output");
        var result = rescaled.Step(v, 999, fixture.Float("step_sample"));
        Assert.True(TensorAssert.BitExact(-v, result.PredOriginalSample));
        Assert.False(result.PrevSample.isnan().any().item<bool>());
    }

    [Fact]
    public void DpmSolverAddNoiseUsesTheScheduleSigmas()
    {
        using var scheduler = new DPMSolverMultistepScheduler(Dpm());
        scheduler.SetTimesteps(10);
        using var scope = torch.NewDisposeScope();
        var x0 = fixture.Float("step_sample");
        var noise = fixture.Float("step_model_output");

        var noisy = scheduler.AddNoise(x0, noise, torch.tensor(new long[] { 999, 500, 100 }));

        float[] sigmas = scheduler.Sigmas;
        int[] positions = [0, 5, 9];
        for (int b = 0; b < 3; b++)
        {
            double sigma = sigmas[positions[b]];
            double alpha = 1 / Math.Sqrt(sigma * sigma + 1);
            TensorAssert.Close(x0[b] * alpha + noise[b] * (sigma * alpha), noisy[b], $"DPM add_noise row {b}");
        }
        var error = Assert.Throws<ArgumentException>(() => scheduler.AddNoise(x0, noise, torch.tensor(new long[] { 999, 998, 100 })));
        Assert.Contains("998", error.Message);
    }

    // ---- DPM-Solver state -----------------------------------------------------------------------------------

    private static Tensor Run(IDiffusionScheduler scheduler, Tensor start)
    {
        var x = start.clone();
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
        {
            using var scope = torch.NewDisposeScope();
            var next = scheduler.Step(StandInModel(x, i), timesteps[i], x).PrevSample.MoveToOuterDisposeScope();
            x.Dispose();
            x = next;
        }
        return x;
    }

    [Fact]
    public void DpmSolverResetAndCloneFreshReproduceTheTrajectory()
    {
        using var scheduler = new DPMSolverMultistepScheduler(Dpm());
        scheduler.SetTimesteps(10);
        using var start = fixture.Float("step_sample");
        using var reference = fixture.Float("dpmpp2m_final");

        using var first = Run(scheduler, start);
        var exhausted = Assert.Throws<InvalidOperationException>(() => scheduler.Step(start, 100, start));
        Assert.Contains("Reset", exhausted.Message);

        scheduler.Reset();
        using var second = Run(scheduler, start);
        using var clone = scheduler.CloneFresh();
        using var third = Run(clone, start);

        TensorAssert.Close(reference, first, "dpmpp2m_final");
        Assert.True(TensorAssert.BitExact(first, second));
        Assert.True(TensorAssert.BitExact(first, third));
        Assert.Equal(scheduler.Timesteps, clone.Timesteps);
    }

    [Fact]
    public void DpmSolverFirstOrderIsDdimWithTrailingSpacing()
    {
        // DPM-Solver++(1) is DDIM in data prediction; with trailing spacing DDIM's t − T/n is the next timestep,
        // and its last step (ᾱ_prev = 1) matches the final sigma 0.
        using var dpm = new DPMSolverMultistepScheduler(Dpm("trailing", order: 1));
        using var ddim = new DDIMScheduler(Ddim("trailing"));
        dpm.SetTimesteps(10);
        ddim.SetTimesteps(10);
        using var start = fixture.Float("step_sample");

        using var fromDpm = Run(dpm, start);
        using var fromDdim = Run(ddim, start);

        TensorAssert.Close(fromDdim, fromDpm, "DPM-Solver++(1) vs DDIM");
    }

    [Fact]
    public void DpmSolverHeunDiffersFromMidpointOnlyInSecondOrderSteps()
    {
        using var midpoint = new DPMSolverMultistepScheduler(Dpm());
        using var heun = new DPMSolverMultistepScheduler(Dpm() with { SolverType = "heun" });
        midpoint.SetTimesteps(10);
        heun.SetTimesteps(10);
        using var scope = torch.NewDisposeScope();
        var x = fixture.Float("step_sample");
        long t0 = midpoint.Timesteps[0], t1 = midpoint.Timesteps[1];

        var m1 = midpoint.Step(StandInModel(x, 0), t0, x).PrevSample;
        var h1 = heun.Step(StandInModel(x, 0), t0, x).PrevSample;
        Assert.True(TensorAssert.BitExact(m1, h1)); // the first step is first order in both
        var m2 = midpoint.Step(StandInModel(m1, 1), t1, m1).PrevSample;
        var h2 = heun.Step(StandInModel(h1, 1), t1, h1).PrevSample;
        Assert.False(TensorAssert.BitExact(m2, h2));
    }

    [Fact]
    public void DpmSolverStepBeforeSetTimestepsIsAClearError()
    {
        using var scheduler = new DPMSolverMultistepScheduler(Dpm());
        using var x = torch.zeros(1, 1, 2, 2);

        var error = Assert.Throws<InvalidOperationException>(() => scheduler.Step(x, 999, x));
        Assert.Contains("SetTimesteps", error.Message);
    }

    [Fact]
    public void SchedulerTensorsSurviveTheCallersDisposeScope()
    {
        DPMSolverMultistepScheduler scheduler;
        using (torch.NewDisposeScope())
        {
            scheduler = new DPMSolverMultistepScheduler(Dpm());
            scheduler.SetTimesteps(10);
        }
        using (scheduler)
        {
            Assert.Equal(1000, scheduler.AlphasCumprod.shape[0]);
            using var start = fixture.Float("step_sample");
            using var result = Run(scheduler, start);
            using var reference = fixture.Float("dpmpp2m_final");
            TensorAssert.Close(reference, result, "dpmpp2m_final after the construction scope ended");
        }
    }
}
