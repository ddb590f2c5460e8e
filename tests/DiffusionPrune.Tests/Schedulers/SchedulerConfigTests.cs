using DiffusionPrune.Schedulers;

namespace DiffusionPrune.Tests.Schedulers;

public sealed class SchedulerConfigTests
{
    [Fact]
    public void ReadsTheSchedulerConfigDiffusersWroteForUnet2dSmall()
    {
        var config = SchedulerConfig.Load(Path.Combine(Fixtures.DiffusersRoot, "unet2d-small", "scheduler_config.json"));

        Assert.Equal(SchedulerConfig.DDIMClassName, config.ClassName);
        Assert.Equal(1000, config.NumTrainTimesteps);
        Assert.Equal(0.0001, config.BetaStart);
        Assert.Equal(0.02, config.BetaEnd);
        Assert.Equal("linear", config.BetaSchedule);
        Assert.Null(config.TrainedBetas);
        Assert.False(config.ClipSample);
        Assert.True(config.SetAlphaToOne);
        Assert.Equal("leading", config.TimestepSpacing);
        Assert.Contains("clip_sample", config.SpecifiedKeys);
        Assert.DoesNotContain("_diffusers_version", config.SpecifiedKeys);
    }

    [Theory]
    [InlineData(SchedulerConfig.DDPMClassName, "leading", "fixed_small")]
    [InlineData(SchedulerConfig.DDIMClassName, "leading", null)]
    [InlineData(SchedulerConfig.DPMSolverMultistepClassName, "linspace", null)]
    [InlineData(SchedulerConfig.PNDMClassName, "leading", null)]
    [InlineData(SchedulerConfig.EulerDiscreteClassName, "linspace", null)]
    [InlineData(SchedulerConfig.EulerAncestralDiscreteClassName, "linspace", null)]
    public void AbsentKeysTakeTheDefaultsOfTheNamedClass(string className, string spacing, string? varianceType)
    {
        var config = SchedulerConfig.Parse($$"""{"_class_name": "{{className}}"}""");

        Assert.Equal(spacing, config.TimestepSpacing);
        Assert.Equal(varianceType, config.VarianceType);
        Assert.True(config.ClipSample);
        Assert.Equal("epsilon", config.PredictionType);
        Assert.Equal(2, config.SolverOrder);
        Assert.Equal(double.NegativeInfinity, config.LambdaMinClipped);
        Assert.Empty(config.SpecifiedKeys);
    }

    [Fact]
    public void NullFlagIsFalseLikePythonNoneButAbsentFlagKeepsItsDefault()
    {
        var withNull = SchedulerConfig.Parse("""{"_class_name": "DDIMScheduler", "clip_sample": null, "set_alpha_to_one": null}""");
        var absent = SchedulerConfig.Parse("""{"_class_name": "DDIMScheduler"}""");

        Assert.False(withNull.ClipSample);
        Assert.False(withNull.SetAlphaToOne);
        Assert.True(absent.ClipSample);
        Assert.True(absent.SetAlphaToOne);
    }

    [Fact]
    public void NullTrainedBetasAndVarianceTypeMeanNotSet()
    {
        var config = SchedulerConfig.Parse("""{"_class_name": "DDPMScheduler", "trained_betas": null, "variance_type": null}""");

        Assert.Null(config.TrainedBetas);
        // Explicit null overrides DDPM's fixed_small default, as in diffusers (where it then behaves as fixed_small).
        Assert.Null(config.VarianceType);
    }

    [Fact]
    public void NullWhereDiffusersNeedsAValueIsAClearError()
    {
        var error = Assert.Throws<SchedulerConfigException>(() =>
            SchedulerConfig.Parse("""{"_class_name": "DDIMScheduler", "timestep_spacing": null}""", "my/scheduler_config.json"));

        Assert.Contains("my/scheduler_config.json", error.Message);
        Assert.Contains("\"timestep_spacing\" is null", error.Message);
    }

    [Fact]
    public void PythonNonFiniteLiteralsParseOutsideStringsOnly()
    {
        // Python's json writes -Infinity bare; a string that merely contains the word must stay untouched.
        var config = SchedulerConfig.Parse("""
            {"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
             "beta_schedule": "NaN -Infinity \" Infinity", "beta_start": 0.00085}
            """);

        Assert.Equal(double.NegativeInfinity, config.LambdaMinClipped);
        Assert.Equal("NaN -Infinity \" Infinity", config.BetaSchedule);
        Assert.Equal(0.00085, config.BetaStart);
    }

    [Fact]
    public void UnknownKeysAreIgnored()
    {
        var config = SchedulerConfig.Parse("""
            {"_class_name": "DDIMScheduler", "_diffusers_version": "0.40.0", "_use_default_values": ["beta_end"],
             "sigma_min": 0.002, "some_future_option": {"nested": [1, 2]}, "num_train_timesteps": 500}
            """);

        Assert.Equal(500, config.NumTrainTimesteps);
        Assert.Equal(new[] { "num_train_timesteps" }, config.SpecifiedKeys.ToArray());
    }

    [Fact]
    public void TrainedBetasAreReadAsNumbers()
    {
        var config = SchedulerConfig.Parse("""{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2, 0.30000001]}""");

        Assert.Equal(new[] { 0.1, 0.2, 0.30000001 }, config.TrainedBetas);
    }

    [Theory]
    [InlineData("{\"num_train_timesteps\": 1000", "not valid JSON")]
    [InlineData("[1, 2]", "not a JSON object")]
    [InlineData("{\"num_train_timesteps\": \"1000\"}", "\"num_train_timesteps\" must be an integer")]
    [InlineData("{\"num_train_timesteps\": 10.5}", "\"num_train_timesteps\" must be an integer")]
    [InlineData("{\"clip_sample\": \"yes\"}", "\"clip_sample\" must be true or false")]
    [InlineData("{\"trained_betas\": [0.1, \"x\"]}", "\"trained_betas\" must be an array of numbers")]
    [InlineData("", "not valid JSON")]
    public void CorruptConfigIsAClearError(string json, string expected)
    {
        var error = Assert.Throws<SchedulerConfigException>(() => SchedulerConfig.Parse(json, "scheduler_config.json"));

        Assert.Contains(expected, error.Message);
        Assert.Contains("scheduler_config.json", error.Message);
    }

    [Fact]
    public void MissingFileNamesThePath()
    {
        string path = Path.Combine(Path.GetTempPath(), $"no-such-{Guid.NewGuid():N}", "scheduler_config.json");

        var error = Assert.Throws<SchedulerConfigException>(() => SchedulerConfig.Load(path));

        Assert.Contains(path, error.Message);
    }

    [Fact]
    public void ForClassKeepsSpecifiedKeysAndTakesTheNewClassDefaultsForTheRest()
    {
        var ddpm = SchedulerConfig.Parse("""
            {"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "prediction_type": "v_prediction", "variance_type": "fixed_large"}
            """);

        var dpm = ddpm.ForClass(SchedulerConfig.DPMSolverMultistepClassName);

        Assert.Equal(SchedulerConfig.DPMSolverMultistepClassName, dpm.ClassName);
        Assert.Equal("scaled_linear", dpm.BetaSchedule);
        Assert.Equal(0.00085, dpm.BetaStart);
        Assert.Equal(0.012, dpm.BetaEnd);
        Assert.Equal("v_prediction", dpm.PredictionType);
        Assert.Equal("fixed_large", dpm.VarianceType);
        Assert.Equal("linspace", dpm.TimestepSpacing); // DPM-Solver's default: the DDPM file did not set it
        Assert.Equal("leading", ddpm.TimestepSpacing);
    }

    [Fact]
    public void PndmAndEulerKeysAndDefaultsAreDiffusers()
    {
        var pndm = SchedulerConfig.Parse("""{"_class_name": "PNDMScheduler"}""");
        Assert.False(pndm.SetAlphaToOne); // unlike DDIM's true
        Assert.False(pndm.SkipPrkSteps);

        var euler = SchedulerConfig.Parse("""
            {"_class_name": "EulerDiscreteScheduler", "skip_prk_steps": true, "interpolation_type": "log_linear",
             "timestep_type": "continuous", "use_karras_sigmas": true}
            """);
        Assert.True(euler.SkipPrkSteps);
        Assert.Equal("log_linear", euler.InterpolationType);
        Assert.Equal("continuous", euler.TimestepType);
        Assert.True(euler.UseKarrasSigmas);
        Assert.Equal("linear", SchedulerConfig.Defaults(SchedulerConfig.EulerDiscreteClassName).InterpolationType);
        Assert.Equal("discrete", SchedulerConfig.Defaults(SchedulerConfig.EulerDiscreteClassName).TimestepType);

        var error = Assert.Throws<SchedulerConfigException>(() => SchedulerConfig.Parse("""{"skip_prk_steps": "yes"}"""));
        Assert.Contains("skip_prk_steps", error.Message);
    }
}
