using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Schedulers;

/// <summary>
/// PNDM (PLMS), Euler and Euler-ancestral against diffusers' formulas. There are no diffusers fixtures for these
/// three: each run is compared with a reference loop written out here from the documented update, in float64, on a
/// noise schedule computed here in float64 from beta_start/beta_end (independently of NoiseSchedule). Our float32
/// result may differ from it by float32 rounding only, hence the 1e-4 relative tolerance.
/// </summary>
public sealed class PndmAndEulerSchedulerTests
{
    private const double Tolerance = 1e-4;

    /// <summary>Stable Diffusion 1.x's scheduler_config.json (CompVis/stable-diffusion-v1-4), as diffusers writes it.</summary>
    private const string Sd1xPndmConfig = """
        {"_class_name": "PNDMScheduler", "_diffusers_version": "0.7.0.dev0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
         "steps_offset": 1, "trained_betas": null, "clip_sample": false}
        """;

    private static SchedulerConfig Sd1x(string className) => SchedulerConfig.Parse(Sd1xPndmConfig).ForClass(className);

    /// <summary>ᾱ in float64: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)², ᾱ_t = Π (1 − β).</summary>
    private static double[] Sd1xAlphasCumprod()
    {
        const int count = 1000;
        double lo = Math.Sqrt(0.00085), hi = Math.Sqrt(0.012);
        var alphasCumprod = new double[count];
        double product = 1;
        for (int i = 0; i < count; i++)
        {
            double root = lo + (hi - lo) * i / (count - 1);
            product *= 1 - root * root;
            alphasCumprod[i] = product;
        }
        return alphasCumprod;
    }

    /// <summary>σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), linearly interpolated between integer timesteps.</summary>
    private static double Sigma(double[] alphasCumprod, double t)
    {
        static double At(double[] acp, int i) => Math.Sqrt((1 - acp[i]) / acp[i]);
        int low = (int)Math.Floor(t);
        if (low >= alphasCumprod.Length - 1) return At(alphasCumprod, alphasCumprod.Length - 1);
        return At(alphasCumprod, low) + (t - low) * (At(alphasCumprod, low + 1) - At(alphasCumprod, low));
    }

    /// <summary>The stand-in model of tests/fixtures/diffusers/schedulers: ε = tanh(x · (0.5 + 0.1 i)) at model call i.</summary>
    private static Tensor StandInModel(Tensor x, int i) => (x * (0.5 + 0.1 * i)).tanh();

    private static Tensor StartNoise() => torch.randn([2, 3, 4, 4], generator: new Generator(20240917));

    // ---- PNDM -----------------------------------------------------------------------------------------------

    [Fact]
    public void PndmTimestepsForStableDiffusion1xAtTenStepsRepeatTheSecondOne()
    {
        using var scheduler = (PNDMScheduler)Scheduler.Create(SchedulerConfig.Parse(Sd1xPndmConfig));
        scheduler.SetTimesteps(10);

        // diffusers' known output for SD 1.x: leading i·100 + steps_offset 1, the second timestep taken twice.
        Assert.Equal(new long[] { 901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1 }, scheduler.Timesteps);
    }

    [Theory]
    [InlineData("trailing", new long[] { 999, 899, 899, 799, 699, 599, 499, 399, 299, 199, 99 })]
    [InlineData("linspace", new long[] { 999, 888, 888, 777, 666, 555, 444, 333, 222, 111, 0 })]
    public void PndmTrailingAndLinspaceIgnoreStepsOffsetAndRepeatTheSecondTimestep(string spacing, long[] expected)
    {
        // trailing: round(arange(1000, 0, -100)) - 1; linspace: round(linspace(0, 999, 10)); steps_offset is for leading only.
        using var scheduler = new PNDMScheduler(Sd1x(SchedulerConfig.PNDMClassName) with { TimestepSpacing = spacing });
        scheduler.SetTimesteps(10);

        Assert.Equal(expected, scheduler.Timesteps);
    }

    [Fact]
    public void PndmWithOneStepHasOneTimestep()
    {
        using var scheduler = new PNDMScheduler(Sd1x(SchedulerConfig.PNDMClassName));
        scheduler.SetTimesteps(1);

        Assert.Equal(new long[] { 1 }, scheduler.Timesteps); // leading: 0 · 1000 + 1
    }

    /// <summary>
    /// PNDM's transfer (formula (9) of the paper) written in DDIM's equivalent form:
    /// x' = sqrt(ᾱ')·(x − sqrt(1 − ᾱ)·ε)/sqrt(ᾱ) + sqrt(1 − ᾱ')·ε. (Multiply DDIM's ε coefficient
    /// (sqrt(ᾱ')sqrt(1−ᾱ) − sqrt(ᾱ)sqrt(1−ᾱ'))/sqrt(ᾱ) by ᾱ·sqrt(1−ᾱ') + sqrt(ᾱ(1−ᾱ)ᾱ') to get ᾱ' − ᾱ: the two agree.)
    /// </summary>
    private static Tensor DdimTransfer(Tensor x, double alpha, double alphaPrev, Tensor eps) =>
        (x - eps * Math.Sqrt(1 - alpha)) / Math.Sqrt(alpha) * Math.Sqrt(alphaPrev) + eps * Math.Sqrt(1 - alphaPrev);

    [Theory]
    [InlineData("epsilon")]
    [InlineData("v_prediction")]
    public void PndmTenStepsMatchAPlmsReferenceLoopInDoublePrecision(string prediction)
    {
        using var scope = torch.NewDisposeScope();
        var config = Sd1x(SchedulerConfig.PNDMClassName) with { PredictionType = prediction };
        using var scheduler = new PNDMScheduler(config);
        scheduler.SetTimesteps(10);
        var start = StartNoise();

        // ours, the way a pipeline drives it: one model call per entry of Timesteps (11 for 10 steps)
        var x = start;
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
            x = scheduler.Step(StandInModel(x, i), timesteps[i], x).PrevSample;

        // reference: PLMS from the paper, in float64
        double[] acp = Sd1xAlphasCumprod();
        long[] ts = [901, 801, 701, 601, 501, 401, 301, 201, 101, 1];
        double Alpha(long t) => t >= 0 ? acp[t] : acp[0]; // set_alpha_to_one false: ᾱ_0 after the last step
        Tensor Eps(Tensor output, Tensor sample, long t) => prediction == "epsilon"
            ? output
            : output * Math.Sqrt(acp[t]) + sample * Math.Sqrt(1 - acp[t]); // ε from v at (sample, t)
        var r = start.to_type(ScalarType.Float64);
        // step 1, no history yet: a Heun step t0 → t1 (Euler predictor, then the mean of the two model outputs)
        var e0 = StandInModel(r, 0);
        var predictor = DdimTransfer(r, acp[ts[0]], acp[ts[1]], Eps(e0, r, ts[0]));
        var e1 = StandInModel(predictor, 1);
        var mean = (e0 + e1) / 2;
        r = DdimTransfer(r, acp[ts[0]], acp[ts[1]], Eps(mean, r, ts[0]));
        // then Adams-Bashforth on the history e0, e2, e3, ... (the corrector's output is not kept), orders 2, 3, 4
        var history = new List<Tensor> { e0 };
        for (int k = 1; k < ts.Length; k++)
        {
            history.Add(StandInModel(r, k + 1));
            var h = history.AsEnumerable().Reverse().ToArray(); // newest first
            var combined = h.Length switch
            {
                2 => (3 * h[0] - h[1]) / 2,
                3 => (23 * h[0] - 16 * h[1] + 5 * h[2]) / 12,
                _ => (55 * h[0] - 59 * h[1] + 37 * h[2] - 9 * h[3]) / 24,
            };
            long next = ts[k] - 100;
            r = DdimTransfer(r, acp[ts[k]], Alpha(next), Eps(combined, r, ts[k]));
        }

        TensorAssert.Close(r, x, $"PNDM {prediction} after 10 steps", Tolerance);
    }

    [Fact]
    public void PndmResetAndCloneFreshReproduceTheTrajectory()
    {
        using var scope = torch.NewDisposeScope();
        using var scheduler = new PNDMScheduler(Sd1x(SchedulerConfig.PNDMClassName));
        scheduler.SetTimesteps(10);
        var start = StartNoise();

        var first = RunVariancePreserving(scheduler, start);
        var exhausted = Assert.Throws<InvalidOperationException>(() => scheduler.Step(start, 1, start));
        Assert.Contains("Reset", exhausted.Message);
        scheduler.Reset();
        var second = RunVariancePreserving(scheduler, start);
        using var clone = scheduler.CloneFresh();
        var third = RunVariancePreserving(clone, start);

        Assert.True(TensorAssert.BitExact(first, second));
        Assert.True(TensorAssert.BitExact(first, third));
    }

    private static Tensor RunVariancePreserving(IDiffusionScheduler scheduler, Tensor start)
    {
        var x = start;
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
            x = scheduler.Step(StandInModel(x, i), timesteps[i], x).PrevSample;
        return x;
    }

    [Fact]
    public void PndmRefusesTheRungeKuttaWarmUpAndSamplePrediction()
    {
        var prk = Assert.Throws<NotSupportedException>(() => new PNDMScheduler(Sd1x(SchedulerConfig.PNDMClassName) with { SkipPrkSteps = false }));
        Assert.Contains("skip_prk_steps", prk.Message);
        Assert.Contains("PLMS", prk.Message);

        var sample = Assert.Throws<NotSupportedException>(() => new PNDMScheduler(Sd1x(SchedulerConfig.PNDMClassName) with { PredictionType = "sample" }));
        Assert.Contains("prediction_type 'sample'", sample.Message);
    }

    [Fact]
    public void PndmStepBeforeSetTimestepsIsAClearError()
    {
        using var scheduler = new PNDMScheduler(Sd1x(SchedulerConfig.PNDMClassName));
        using var x = torch.zeros(1, 1, 2, 2);

        var error = Assert.Throws<InvalidOperationException>(() => scheduler.Step(x, 999, x));
        Assert.Contains("SetTimesteps", error.Message);
    }

    // ---- Euler: sigmas and initial noise ---------------------------------------------------------------------

    [Fact]
    public void EulerInitNoiseSigmaIsTheLargestSigmaOrSqrtOfItsSquarePlusOneForLeading()
    {
        double[] acp = Sd1xAlphasCumprod();
        double sigma999 = Sigma(acp, 999), sigma901 = Sigma(acp, 901);
        Assert.InRange(sigma999, 14.6141, 14.6151); // SD 1.x's well-known σ_max ≈ 14.6146, here from the betas
        var leading = Sd1x(SchedulerConfig.EulerDiscreteClassName) with { TimestepSpacing = "leading" };

        // Before set_timesteps the sigmas are the training ones (max at t = 999); leading adds the +1 of a unit-variance x0.
        using var scheduler = new EulerDiscreteScheduler(leading);
        Assert.Equal(Math.Sqrt(sigma999 * sigma999 + 1), scheduler.InitNoiseSigma, Tolerance);
        // 10 leading steps start at 901: the largest inference sigma is σ(901).
        scheduler.SetTimesteps(10);
        Assert.Equal(Math.Sqrt(sigma901 * sigma901 + 1), scheduler.InitNoiseSigma, Tolerance);
        using var ancestral = new EulerAncestralDiscreteScheduler(Sd1x(SchedulerConfig.EulerAncestralDiscreteClassName) with { TimestepSpacing = "leading" });
        ancestral.SetTimesteps(10);
        Assert.Equal(scheduler.InitNoiseSigma, ancestral.InitNoiseSigma);

        // linspace and trailing start at 999 and use σ_max itself.
        foreach (var spacing in new[] { "linspace", "trailing" })
        {
            using var other = new EulerDiscreteScheduler(leading with { TimestepSpacing = spacing });
            other.SetTimesteps(10);
            Assert.Equal(sigma999, other.InitNoiseSigma, Tolerance);
        }
    }

    [Fact]
    public void AStableDiffusion1xConfigWithoutTimestepSpacingGivesEulerItsLinspaceDefault()
    {
        // The file (written for PNDM by diffusers 0.7) has no timestep_spacing: from_config fills Euler's own default.
        using var scheduler = Scheduler.Create(SchedulerConfig.Parse(Sd1xPndmConfig), "euler");

        Assert.Equal("linspace", scheduler.Config.TimestepSpacing);
    }

    [Fact]
    public void EulerLinspaceTimestepsAreFractionalAndTheirSigmasInterpolated()
    {
        double[] acp = Sd1xAlphasCumprod();
        using var scheduler = new EulerDiscreteScheduler(Sd1x(SchedulerConfig.EulerDiscreteClassName));
        scheduler.SetTimesteps(50);

        // linspace(0, 999, 50)[::-1] in float32: 999, 978.6122..., not rounded as DDIM's are
        double second = 999 - 999.0 / 49;
        Assert.Equal(50, scheduler.ModelTimesteps.Length);
        Assert.Equal(999, scheduler.ModelTimesteps[0]);
        Assert.Equal((float)second, scheduler.ModelTimesteps[1]);
        Assert.Equal(979, scheduler.Timesteps[1]); // what Step and ScaleModelInput are given: rounded
        Assert.Equal(0, scheduler.ModelTimesteps[^1]);
        // σ at 978.61 lies on the line between σ(978) and σ(979); the list ends with 0.
        var sigmas = scheduler.Sigmas;
        Assert.Equal(51, sigmas.Length);
        Assert.Equal(Sigma(acp, second), sigmas[1], Tolerance * sigmas[1]);
        Assert.InRange(sigmas[1], Sigma(acp, 978), Sigma(acp, 979));
        Assert.Equal(0f, sigmas[^1]);

        using var sigmaMin = new EulerDiscreteScheduler(Sd1x(SchedulerConfig.EulerDiscreteClassName) with { FinalSigmasType = "sigma_min" });
        sigmaMin.SetTimesteps(50);
        Assert.Equal(Sigma(acp, 0), sigmaMin.Sigmas[^1], 1e-6);
    }

    [Fact]
    public void EulerLeadingTimestepsAddStepsOffset()
    {
        using var scheduler = new EulerDiscreteScheduler(Sd1x(SchedulerConfig.EulerDiscreteClassName) with { TimestepSpacing = "leading" });
        scheduler.SetTimesteps(10);

        Assert.Equal(new long[] { 901, 801, 701, 601, 501, 401, 301, 201, 101, 1 }, scheduler.Timesteps);
        Assert.Equal(scheduler.Timesteps.Select(t => (double)t), scheduler.ModelTimesteps);
    }

    // ---- Euler: whole runs against the formulas ---------------------------------------------------------------

    /// <summary>The timesteps of a spacing, written out: leading i·(1000/n) + 1; trailing round(1000 − i·1000/n) − 1; linspace 999·i/(n − 1).</summary>
    private static double[] ReferenceTimesteps(string spacing, int n) => spacing switch
    {
        "leading" => Enumerable.Range(0, n).Reverse().Select(i => (double)(i * (1000 / n) + 1)).ToArray(),
        "trailing" => Enumerable.Range(0, n).Select(i => Math.Round(1000 - i * 1000.0 / n) - 1).ToArray(),
        _ => Enumerable.Range(0, n).Reverse().Select(i => 999.0 * i / (n - 1)).ToArray(),
    };

    /// <summary>x0 from the model output at noise level σ (x is the unscaled latent x0 + σ·ε).</summary>
    private static Tensor ReferenceX0(string prediction, Tensor output, Tensor x, double sigma) => prediction switch
    {
        "epsilon" => x - output * sigma,
        // the model saw x / sqrt(σ²+1) = α·x0 + s·ε with α = 1/sqrt(σ²+1), s = σα; v = α·ε − s·x0 gives
        // x0 = α·(x/sqrt(σ²+1)) − s·v = x/(σ²+1) − σ/sqrt(σ²+1)·v
        "v_prediction" => x / (sigma * sigma + 1) - output * (sigma / Math.Sqrt(sigma * sigma + 1)),
        _ => output,
    };

    [Theory]
    [InlineData("leading", 10, "epsilon")]
    [InlineData("linspace", 10, "epsilon")]
    [InlineData("linspace", 7, "epsilon")] // fractional timesteps: 999·i/6
    [InlineData("trailing", 10, "epsilon")]
    [InlineData("leading", 10, "v_prediction")]
    [InlineData("linspace", 7, "sample")]
    public void EulerRunMatchesAReferenceEulerLoopInDoublePrecision(string spacing, int steps, string prediction)
    {
        using var scope = torch.NewDisposeScope();
        var config = Sd1x(SchedulerConfig.EulerDiscreteClassName) with { TimestepSpacing = spacing, PredictionType = prediction };
        using var scheduler = new EulerDiscreteScheduler(config);
        scheduler.SetTimesteps(steps);
        var start = StartNoise();

        // ours, in a pipeline's order: noise · init_noise_sigma; model(scale_model_input(x, t)); step
        var x = start * scheduler.InitNoiseSigma;
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
        {
            var output = StandInModel(scheduler.ScaleModelInput(x, timesteps[i]), i);
            x = scheduler.Step(output, timesteps[i], x).PrevSample;
        }

        // reference: σ_i at the written-out timesteps, σ_n = 0; x ← x + (x − x0)/σ_i · (σ_{i+1} − σ_i)
        double[] acp = Sd1xAlphasCumprod();
        var sigmas = ReferenceTimesteps(spacing, steps).Select(t => Sigma(acp, t)).Append(0.0).ToArray();
        double initSigma = spacing == "leading" ? Math.Sqrt(sigmas.Max() * sigmas.Max() + 1) : sigmas.Max();
        var r = start.to_type(ScalarType.Float64) * initSigma;
        for (int i = 0; i < steps; i++)
        {
            double sigma = sigmas[i];
            var output = StandInModel(r / Math.Sqrt(sigma * sigma + 1), i);
            var x0 = ReferenceX0(prediction, output, r, sigma);
            r = r + (r - x0) / sigma * (sigmas[i + 1] - sigma);
        }

        TensorAssert.Close(r, x, $"Euler {spacing} {steps} {prediction}", Tolerance);
    }

    [Fact]
    public void EulerChurnRaisesSigmaWithTheGivenNoiseBeforeTheStep()
    {
        using var scope = torch.NewDisposeScope();
        const double churn = 1.0;
        using var scheduler = new EulerDiscreteScheduler(Sd1x(SchedulerConfig.EulerDiscreteClassName), sChurn: churn, sTmax: 10.0);
        scheduler.SetTimesteps(10);
        var start = StartNoise();
        var noises = Enumerable.Range(0, 10).Select(i => torch.randn([2, 3, 4, 4], generator: new Generator(100 + (ulong)i))).ToArray();

        var x = start * scheduler.InitNoiseSigma;
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
        {
            var output = StandInModel(scheduler.ScaleModelInput(x, timesteps[i]), i);
            x = scheduler.Step(output, timesteps[i], x, noises[i]).PrevSample;
        }

        // Karras et al. Algorithm 2 as diffusers runs it: γ = min(s_churn/n, √2 − 1) where σ ≤ s_tmax, σ̂ = σ(1 + γ),
        // x̂ = x + ε·sqrt(σ̂² − σ²); the model still saw x/sqrt(σ²+1); then Euler from σ̂ to σ_next.
        double[] acp = Sd1xAlphasCumprod();
        var sigmas = ReferenceTimesteps("linspace", 10).Select(t => Sigma(acp, t)).Append(0.0).ToArray();
        var r = start.to_type(ScalarType.Float64) * sigmas.Max();
        int churned = 0;
        for (int i = 0; i < 10; i++)
        {
            double sigma = sigmas[i];
            var output = StandInModel(r / Math.Sqrt(sigma * sigma + 1), i);
            double gamma = sigma <= 10.0 ? Math.Min(churn / 10, Math.Sqrt(2) - 1) : 0;
            double sigmaHat = sigma * (1 + gamma);
            if (gamma > 0)
            {
                r = r + noises[i].to_type(ScalarType.Float64) * Math.Sqrt(sigmaHat * sigmaHat - sigma * sigma);
                churned++;
            }
            var x0 = r - output * sigmaHat;
            r = r + (r - x0) / sigmaHat * (sigmas[i + 1] - sigmaHat);
        }

        Assert.InRange(churned, 1, 9); // the window excludes the first steps (σ > 10) and includes later ones
        TensorAssert.Close(r, x, "Euler with churn", Tolerance);
    }

    [Fact]
    public void EulerAncestralRunMatchesAReferenceLoopWithTheGivenNoise()
    {
        using var scope = torch.NewDisposeScope();
        using var scheduler = new EulerAncestralDiscreteScheduler(Sd1x(SchedulerConfig.EulerAncestralDiscreteClassName));
        scheduler.SetTimesteps(10);
        var start = StartNoise();
        var noises = Enumerable.Range(0, 10).Select(i => torch.randn([2, 3, 4, 4], generator: new Generator(200 + (ulong)i))).ToArray();

        var x = start * scheduler.InitNoiseSigma;
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
        {
            var output = StandInModel(scheduler.ScaleModelInput(x, timesteps[i]), i);
            x = scheduler.Step(output, timesteps[i], x, noises[i]).PrevSample;
        }

        // k-diffusion's ancestral step: σ_up² = σ'²(σ² − σ'²)/σ², σ_down² = σ'² − σ_up² (so σ_down² + σ_up² = σ'²);
        // Euler from σ to σ_down, then add σ_up·noise.
        double[] acp = Sd1xAlphasCumprod();
        var sigmas = ReferenceTimesteps("linspace", 10).Select(t => Sigma(acp, t)).Append(0.0).ToArray();
        var r = start.to_type(ScalarType.Float64) * sigmas.Max();
        for (int i = 0; i < 10; i++)
        {
            double sigma = sigmas[i], next = sigmas[i + 1];
            var output = StandInModel(r / Math.Sqrt(sigma * sigma + 1), i);
            double sigmaUp = Math.Sqrt(next * next * (sigma * sigma - next * next) / (sigma * sigma));
            double sigmaDown = Math.Sqrt(next * next - sigmaUp * sigmaUp);
            var x0 = r - output * sigma;
            r = r + (r - x0) / sigma * (sigmaDown - sigma) + noises[i].to_type(ScalarType.Float64) * sigmaUp;
        }

        TensorAssert.Close(r, x, "Euler ancestral", Tolerance);
    }

    private static Tensor RunEuler(IDiffusionScheduler scheduler, Tensor start, Func<int, Tensor?> noise, Func<int, Generator?> generator)
    {
        var x = start * scheduler.InitNoiseSigma;
        var timesteps = scheduler.Timesteps;
        for (int i = 0; i < timesteps.Length; i++)
        {
            var output = StandInModel(scheduler.ScaleModelInput(x, timesteps[i]), i);
            x = scheduler.Step(output, timesteps[i], x, noise(i), generator(i)).PrevSample;
        }
        return x;
    }

    [Fact]
    public void EulerAncestralIsReproducibleFromFixedNoiseOrASeededGenerator()
    {
        using var scope = torch.NewDisposeScope();
        using var scheduler = new EulerAncestralDiscreteScheduler(Sd1x(SchedulerConfig.EulerAncestralDiscreteClassName) with { PredictionType = "v_prediction" });
        scheduler.SetTimesteps(10);
        var start = StartNoise();
        var noises = Enumerable.Range(0, 10).Select(i => torch.randn([2, 3, 4, 4], generator: new Generator(300 + (ulong)i))).ToArray();

        var fixedA = RunEuler(scheduler, start, i => noises[i], _ => null);
        scheduler.Reset();
        var fixedB = RunEuler(scheduler, start, i => noises[i], _ => null);
        Assert.True(TensorAssert.BitExact(fixedA, fixedB));

        var seeded = new Generator(7);
        using var clone = (EulerAncestralDiscreteScheduler)scheduler.CloneFresh();
        var seededA = RunEuler(clone, start, _ => null, _ => seeded);
        seeded = new Generator(7);
        clone.Reset();
        var seededB = RunEuler(clone, start, _ => null, _ => seeded);
        var other = new Generator(8);
        clone.Reset();
        var seededC = RunEuler(clone, start, _ => null, _ => other);
        Assert.True(TensorAssert.BitExact(seededA, seededB));
        Assert.False(TensorAssert.BitExact(seededA, seededC)); // the noise matters: a different seed, a different sample
    }

    [Fact]
    public void EulerStateResetsAndRefusesAnExhaustedOrUnknownTimestep()
    {
        using var scope = torch.NewDisposeScope();
        using var scheduler = new EulerDiscreteScheduler(Sd1x(SchedulerConfig.EulerDiscreteClassName));
        var x = StartNoise();
        var early = Assert.Throws<InvalidOperationException>(() => scheduler.ScaleModelInput(x, 999));
        Assert.Contains("SetTimesteps", early.Message);

        scheduler.SetTimesteps(10);
        var unknown = Assert.Throws<ArgumentException>(() => scheduler.ScaleModelInput(x, 500));
        Assert.Contains("500", unknown.Message);
        var first = RunEuler(scheduler, x, _ => null, _ => null);
        var exhausted = Assert.Throws<InvalidOperationException>(() => scheduler.Step(x, 0, x));
        Assert.Contains("Reset", exhausted.Message);
        scheduler.Reset();
        var second = RunEuler(scheduler, x, _ => null, _ => null);
        Assert.True(TensorAssert.BitExact(first, second));
    }

    [Fact]
    public void EulerStepsFromTheStepIndexNotTheTimestepsValue()
    {
        // As in diffusers the index is set once, from the first timestep, and then advances by one per step.
        using var scope = torch.NewDisposeScope();
        using var scheduler = new EulerDiscreteScheduler(Sd1x(SchedulerConfig.EulerDiscreteClassName));
        scheduler.SetTimesteps(10);
        var x = StartNoise();

        Assert.Null(scheduler.StepIndex);
        scheduler.ScaleModelInput(x, scheduler.Timesteps[3]);
        Assert.Equal(3, scheduler.StepIndex);
        scheduler.Step(x, scheduler.Timesteps[3], x);
        Assert.Equal(4, scheduler.StepIndex);
    }

    [Fact]
    public void EulerAddNoiseIsX0PlusSigmaTimesNoiseAtTheScheduledTimestep()
    {
        using var scope = torch.NewDisposeScope();
        using var scheduler = new EulerDiscreteScheduler(Sd1x(SchedulerConfig.EulerDiscreteClassName) with { TimestepSpacing = "leading" });
        scheduler.SetTimesteps(10);
        var x0 = torch.ones(2, 1, 2, 2);
        var noise = torch.full([2, 1, 2, 2], 2.0f);

        var noisy = scheduler.AddNoise(x0, noise, torch.tensor(new long[] { 901, 1 }));

        var sigmas = scheduler.Sigmas;
        Assert.Equal(1 + 2 * sigmas[0], noisy[0, 0, 0, 0].item<float>(), 1e-5f);
        Assert.Equal(1 + 2 * sigmas[9], noisy[1, 0, 0, 0].item<float>(), 1e-5f);
    }

    // ---- refusals and the factory ----------------------------------------------------------------------------

    [Theory]
    [InlineData("use_karras_sigmas", "true", "use_karras_sigmas")]
    [InlineData("use_exponential_sigmas", "true", "use_exponential_sigmas")]
    [InlineData("use_beta_sigmas", "true", "use_beta_sigmas")]
    [InlineData("interpolation_type", "\"log_linear\"", "interpolation_type 'log_linear'")]
    [InlineData("timestep_type", "\"continuous\"", "timestep_type 'continuous'")]
    [InlineData("final_sigmas_type", "\"denoise_to_zero\"", "final_sigmas_type 'denoise_to_zero'")]
    [InlineData("timestep_spacing", "\"karras\"", "timestep_spacing 'karras'")]
    public void EulerRefusesUnsupportedOptionsByName(string key, string value, string expected)
    {
        var config = SchedulerConfig.Parse($$"""{"_class_name": "EulerDiscreteScheduler", "{{key}}": {{value}}}""");

        var error = Assert.Throws<NotSupportedException>(() => Scheduler.Create(config));

        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public void EulerRefusesInvalidChurnAndEulerAncestralRefusesSamplePrediction()
    {
        var config = Sd1x(SchedulerConfig.EulerDiscreteClassName);
        Assert.Contains("s_churn", Assert.Throws<ArgumentOutOfRangeException>(() => new EulerDiscreteScheduler(config, sChurn: -1)).Message);
        Assert.Contains("s_tmax", Assert.Throws<ArgumentOutOfRangeException>(() => new EulerDiscreteScheduler(config, sTmin: 5, sTmax: 1)).Message);
        Assert.Contains("s_noise", Assert.Throws<ArgumentOutOfRangeException>(() => new EulerDiscreteScheduler(config, sNoise: double.NaN)).Message);

        var sample = Assert.Throws<NotSupportedException>(() =>
            new EulerAncestralDiscreteScheduler(Sd1x(SchedulerConfig.EulerAncestralDiscreteClassName) with { PredictionType = "sample" }));
        Assert.Contains("prediction_type 'sample'", sample.Message);
    }

    [Theory]
    [InlineData("pndm", typeof(PNDMScheduler))]
    [InlineData("euler", typeof(EulerDiscreteScheduler))]
    [InlineData("EULER-A", typeof(EulerAncestralDiscreteScheduler))]
    [InlineData("EulerDiscreteScheduler", typeof(EulerDiscreteScheduler))]
    public void ShortNamesBuildTheNewSchedulersOverADdimConfig(string name, Type expected)
    {
        var ddim = SchedulerConfig.Parse("""
            {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "steps_offset": 1, "timestep_spacing": "leading", "set_alpha_to_one": false}
            """);
        using var reference = new DDIMScheduler(ddim);

        using var scheduler = Scheduler.Create(ddim, name);

        Assert.IsType(expected, scheduler);
        Assert.True(TensorAssert.BitExact(reference.AlphasCumprod, scheduler.AlphasCumprod));
        scheduler.SetTimesteps(10);
        Assert.Equal(901, scheduler.Timesteps[0]); // the file's spacing and offset carry over
    }

    [Fact]
    public void PndmShortNameMeansPlmsEvenWhereTheConfigIsSilentOnSkipPrkSteps()
    {
        // diffusers' PNDM default is skip_prk_steps false (Runge-Kutta first); "pndm" pins the PLMS path we implement.
        var ddim = SchedulerConfig.Parse("""{"_class_name": "DDIMScheduler"}""");
        using var scheduler = (PNDMScheduler)Scheduler.Create(ddim, "pndm");
        Assert.True(scheduler.Config.SkipPrkSteps);
        Assert.False(scheduler.Config.SetAlphaToOne); // PNDM's own default where the file is silent

        var fromFile = SchedulerConfig.Parse("""{"_class_name": "PNDMScheduler"}""");
        var error = Assert.Throws<NotSupportedException>(() => Scheduler.Create(fromFile));
        Assert.Contains("\"skip_prk_steps\": true", error.Message);
    }

    [Fact]
    public void TheVariancePreservingSchedulersKeepTheNoiseAndTheModelInputAsTheyAre()
    {
        using var scope = torch.NewDisposeScope();
        var x = StartNoise();
        foreach (var name in new[] { "ddim", "ddpm", "dpm++2m", "pndm" })
        {
            using var scheduler = Scheduler.Create(Sd1x(SchedulerConfig.DDIMClassName), name);
            scheduler.SetTimesteps(10);

            Assert.Equal(1.0, scheduler.InitNoiseSigma);
            Assert.True(TensorAssert.BitExact(x, scheduler.ScaleModelInput(x, scheduler.Timesteps[0])), name);
            Assert.Equal(scheduler.Timesteps.Select(t => (double)t), scheduler.ModelTimesteps);
        }
    }
}
