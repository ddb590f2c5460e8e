using DiffusionPrune.Schedulers;

namespace DiffusionPrune.Tests.Schedulers;

public sealed class SchedulerFactoryTests
{
    [Theory]
    [InlineData(SchedulerConfig.DDPMClassName, typeof(DDPMScheduler))]
    [InlineData(SchedulerConfig.DDIMClassName, typeof(DDIMScheduler))]
    [InlineData(SchedulerConfig.DPMSolverMultistepClassName, typeof(DPMSolverMultistepScheduler))]
    [InlineData(SchedulerConfig.EulerDiscreteClassName, typeof(EulerDiscreteScheduler))]
    [InlineData(SchedulerConfig.EulerAncestralDiscreteClassName, typeof(EulerAncestralDiscreteScheduler))]
    public void CreatesTheClassNamedInTheConfig(string className, Type expected)
    {
        using var scheduler = Scheduler.Create(SchedulerConfig.Parse($$"""{"_class_name": "{{className}}"}"""));

        Assert.IsType(expected, scheduler);
    }

    [Fact]
    public void FromFileBuildsUnet2dSmallsDdimWithTheFixtureTimesteps()
    {
        string folder = Path.Combine(Fixtures.DiffusersRoot, "unet2d-small");
        using var scheduler = Scheduler.FromFile(Path.Combine(folder, "scheduler_config.json"));
        using var io = DiffusionPrune.Formats.SafetensorsFile.Open(Path.Combine(folder, "io.safetensors"));
        using var expected = io.Read("ddim_timesteps");

        scheduler.SetTimesteps(10);

        Assert.IsType<DDIMScheduler>(scheduler);
        Assert.Equal(expected.data<long>().ToArray(), scheduler.Timesteps);
    }

    [Theory]
    [InlineData("ddim", typeof(DDIMScheduler))]
    [InlineData("DDIM", typeof(DDIMScheduler))]
    [InlineData("dpm++2m", typeof(DPMSolverMultistepScheduler))]
    [InlineData("ddpm", typeof(DDPMScheduler))]
    [InlineData("DDIMScheduler", typeof(DDIMScheduler))]
    public void OverrideTakesTheClassFromTheNameAndTheBetasFromTheConfig(string name, Type expected)
    {
        var ddpmConfig = SchedulerConfig.Parse("""
            {"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "prediction_type": "v_prediction"}
            """);
        using var reference = new DDPMScheduler(ddpmConfig);

        using var scheduler = Scheduler.Create(ddpmConfig, name);

        Assert.IsType(expected, scheduler);
        Assert.Equal("v_prediction", scheduler.Config.PredictionType);
        Assert.True(TensorAssert.BitExact(reference.AlphasCumprod, scheduler.AlphasCumprod));
    }

    [Fact]
    public void OverrideToDpmSolverUsesDpmSolversDefaultSpacingWhereTheFileIsSilent()
    {
        var ddpmConfig = SchedulerConfig.Parse("""{"_class_name": "DDPMScheduler", "solver_order": 1, "algorithm_type": "dpmsolver"}""");

        using var scheduler = (DPMSolverMultistepScheduler)Scheduler.Create(ddpmConfig, "dpm++2m");
        scheduler.SetTimesteps(10);

        // linspace(0, 999, 11).round()[::-1][:-1], as diffusers' DPMSolverMultistepScheduler.from_config(ddpm.config)
        Assert.Equal(new long[] { 999, 899, 799, 699, 599, 500, 400, 300, 200, 100 }, scheduler.Timesteps);
        Assert.Equal(2, scheduler.Config.SolverOrder); // "2M" pins the order and the algorithm
        Assert.Equal("dpmsolver++", scheduler.Config.AlgorithmType);
    }

    [Fact]
    public void UnsupportedClassNamesTheSupportedOnes()
    {
        var config = SchedulerConfig.Parse("""{"_class_name": "LMSDiscreteScheduler"}""");

        var error = Assert.Throws<NotSupportedException>(() => Scheduler.Create(config));

        Assert.Contains("LMSDiscreteScheduler", error.Message);
        Assert.Contains("pndm (PNDMScheduler)", error.Message);
        Assert.Contains("euler (EulerDiscreteScheduler)", error.Message);
        Assert.Contains("euler-a (EulerAncestralDiscreteScheduler)", error.Message);
        Assert.Contains("ddim (DDIMScheduler)", error.Message);
        Assert.Contains("dpm++2m (DPMSolverMultistepScheduler)", error.Message);
        Assert.Contains("ddpm (DDPMScheduler)", error.Message);
        // ...and the same config samples fine with an override.
        using var ddim = Scheduler.Create(config, "ddim");
        Assert.IsType<DDIMScheduler>(ddim);
    }

    [Fact]
    public void UnknownOverrideAndMissingClassNameAreClearErrors()
    {
        var error = Assert.Throws<NotSupportedException>(() => Scheduler.Create(new SchedulerConfig(), "heun"));
        Assert.Contains("heun", error.Message);
        Assert.Contains("dpm++2m", error.Message);

        var missing = Assert.Throws<ArgumentException>(() => Scheduler.Create(new SchedulerConfig()));
        Assert.Contains("_class_name", missing.Message);
    }

    [Theory]
    [InlineData(SchedulerConfig.DDPMClassName)]
    [InlineData(SchedulerConfig.DDIMClassName)]
    [InlineData(SchedulerConfig.DPMSolverMultistepClassName)]
    public void ThresholdingIsRejectedClearly(string className)
    {
        var config = SchedulerConfig.Parse($$"""{"_class_name": "{{className}}", "thresholding": true}""");

        var error = Assert.Throws<NotSupportedException>(() => Scheduler.Create(config));

        Assert.Contains("thresholding", error.Message);
    }

    [Fact]
    public void KarrasSigmasAreRejectedByDpmSolverAndIgnoredByDdimLikeDiffusers()
    {
        var config = SchedulerConfig.Parse("""{"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": true}""");

        var error = Assert.Throws<NotSupportedException>(() => Scheduler.Create(config));
        Assert.Contains("use_karras_sigmas", error.Message);

        using var ddim = Scheduler.Create(config, "ddim");
        Assert.IsType<DDIMScheduler>(ddim);
    }

    [Theory]
    [InlineData("beta_schedule", "\"sigmoid\"", "beta_schedule 'sigmoid'")]
    [InlineData("prediction_type", "\"flow_prediction\"", "prediction_type 'flow_prediction'")]
    [InlineData("timestep_spacing", "\"karras\"", "timestep_spacing 'karras'")]
    public void UnsupportedValuesNameThemselves(string key, string value, string expected)
    {
        var config = SchedulerConfig.Parse($$"""{"_class_name": "DDIMScheduler", "{{key}}": {{value}}}""");

        var error = Assert.Throws<NotSupportedException>(() => Scheduler.Create(config));

        Assert.Contains(expected, error.Message);
    }

    [Fact]
    public void DdimEtaReachesTheDdimScheduler()
    {
        using var scheduler = Scheduler.Create(SchedulerConfig.Defaults(SchedulerConfig.DDIMClassName), ddimEta: 0.5);

        Assert.Equal(0.5, ((DDIMScheduler)scheduler).Eta);
    }
}
