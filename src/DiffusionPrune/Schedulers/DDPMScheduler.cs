using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>
/// diffusers' DDPMScheduler (Ho et al. 2020): ancestral sampling with the posterior q(x_{t-1} | x_t, x0).
/// <see cref="Step"/> is a pure function of its arguments (the timesteps from <see cref="SetTimesteps"/> aside)
/// built from differentiable torch ops, so a step can be recomputed and back-propagated through.
/// <para>
/// variance_type: fixed_small (default), fixed_small_log, fixed_large, learned, learned_range. fixed_large_log is
/// rejected: diffusers takes the square root of its (negative) log-variance and samples NaN.
/// </para>
/// </summary>
public sealed class DDPMScheduler : IDiffusionScheduler
{
    public static readonly string[] SupportedVarianceTypes = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"];

    private readonly Tensor _betas;
    private readonly Tensor _alphasCumprod;
    private readonly float[] _alphasCumprodValues;
    private long[] _timesteps;

    public SchedulerConfig Config { get; }
    public Tensor Betas => _betas;
    public Tensor AlphasCumprod => _alphasCumprod;
    public long[] Timesteps => (long[])_timesteps.Clone();
    public int? NumInferenceSteps { get; private set; }

    public DDPMScheduler(SchedulerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        SchedulerValidation.RejectThresholding(config, nameof(DDPMScheduler));
        SchedulerValidation.CheckPredictionType(config, nameof(DDPMScheduler));
        SchedulerValidation.CheckSpacing(config, nameof(DDPMScheduler));
        // null behaves as fixed_small in diffusers: no branch of _get_variance matches and step takes the square root.
        if (config.VarianceType is { } varianceType && !SupportedVarianceTypes.Contains(varianceType))
            throw new NotSupportedException($"DDPMScheduler: variance_type '{varianceType}' is not supported. Supported: {string.Join(", ", SupportedVarianceTypes)}.");
        Config = config;

        using var scope = torch.NewDisposeScope();
        _betas = NoiseSchedule.Betas(config).DetachFromDisposeScope();
        _alphasCumprod = NoiseSchedule.AlphasCumprod(_betas).DetachFromDisposeScope();
        _alphasCumprodValues = _alphasCumprod.data<float>().ToArray();
        _timesteps = DefaultTimesteps(config.NumTrainTimesteps);
    }

    internal static long[] DefaultTimesteps(int numTrainTimesteps) =>
        Enumerable.Range(0, numTrainTimesteps).Reverse().Select(t => (long)t).ToArray();

    public void SetTimesteps(int numInferenceSteps)
    {
        SchedulerValidation.CheckStepCount(numInferenceSteps, Config.NumTrainTimesteps, nameof(DDPMScheduler));
        long[] timesteps = NoiseSchedule.SpacedTimesteps(Config, numInferenceSteps);
        _timesteps = timesteps;
        NumInferenceSteps = numInferenceSteps;
    }

    /// <summary>
    /// The timestep after <paramref name="timestep"/>: the next one in <see cref="Timesteps"/> (−1 after the last) once
    /// <see cref="SetTimesteps"/> has been called, <c>timestep − 1</c> before.
    /// </summary>
    public long PreviousTimestep(long timestep)
    {
        if (NumInferenceSteps is null) return timestep - 1;
        int index = Array.IndexOf(_timesteps, timestep);
        if (index < 0)
            throw new ArgumentException($"DDPMScheduler: timestep {timestep} is not one of the {_timesteps.Length} inference timesteps set by SetTimesteps({NumInferenceSteps}).", nameof(timestep));
        return index == _timesteps.Length - 1 ? -1 : _timesteps[index + 1];
    }

    /// <summary>
    /// diffusers' <c>_get_variance(t)</c>: the posterior variance for the configured variance_type (clamped at 1e-20),
    /// a log-variance for learned_range, a standard deviation for fixed_small_log. A 0-d float32 tensor unless
    /// <paramref name="predictedVariance"/> (the model's second half of channels) makes it a full tensor.
    /// </summary>
    public Tensor GetVariance(long timestep, Tensor? predictedVariance = null)
    {
        CheckTimestep(timestep);
        var (variance, currentBetaT) = PosteriorVariance(timestep);
        switch (Config.VarianceType)
        {
            case "fixed_small_log":
                return torch.tensor(MathF.Exp(0.5f * MathF.Log(variance)));
            case "fixed_large":
                return torch.tensor(currentBetaT);
            case "learned":
                return RequirePredictedVariance(predictedVariance).alias();
            case "learned_range":
                // Interpolate the log-variance between β̃_t and β_t: frac · log β_t + (1 − frac) · log β̃_t.
                using (var scope = torch.NewDisposeScope())
                {
                    float minLog = MathF.Log(variance), maxLog = MathF.Log(currentBetaT);
                    var frac = (RequirePredictedVariance(predictedVariance) + 1) / 2;
                    return (frac * maxLog + (1 - frac) * minLog).MoveToOuterDisposeScope();
                }
            default: // fixed_small, or null as in diffusers
                return torch.tensor(variance);
        }
    }

    /// <summary>β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t clamped at 1e-20 (so log at t = 0 stays finite), and β_t.</summary>
    private (float Variance, float CurrentBetaT) PosteriorVariance(long timestep)
    {
        long prevTimestep = PreviousTimestep(timestep);
        float alphaProdT = _alphasCumprodValues[timestep];
        float alphaProdTPrev = prevTimestep >= 0 ? _alphasCumprodValues[prevTimestep] : 1f;
        float currentBetaT = 1f - alphaProdT / alphaProdTPrev;
        float variance = (1f - alphaProdTPrev) / (1f - alphaProdT) * currentBetaT;
        return (variance < 1e-20f ? 1e-20f : variance, currentBetaT);
    }

    private Tensor RequirePredictedVariance(Tensor? predictedVariance) =>
        predictedVariance ?? throw new ArgumentException(
            $"DDPMScheduler: variance_type '{Config.VarianceType}' needs the model's predicted variance: pass the whole 2C-channel model output to Step.");

    /// <summary>
    /// One DDPM step. Noise is added only for <paramref name="timestep"/> &gt; 0; <paramref name="varianceNoise"/>,
    /// when given, is used as is (zeros give the posterior mean).
    /// </summary>
    public SchedulerStepResult Step(Tensor modelOutput, long timestep, Tensor sample, Tensor? varianceNoise = null, torch.Generator? generator = null)
    {
        CheckTimestep(timestep);
        using var scope = torch.NewDisposeScope();

        // 1. split a learned-sigma output [B, 2C, ...] into the prediction and the variance channels
        Tensor? predictedVariance = null;
        long channels = sample.shape[1];
        if (modelOutput.dim() == sample.dim() && modelOutput.shape[1] == 2 * channels && Config.VarianceType is "learned" or "learned_range")
        {
            var halves = modelOutput.split(channels, 1);
            modelOutput = halves[0];
            predictedVariance = halves[1];
        }
        SchedulerValidation.CheckSameShape(modelOutput, sample, nameof(DDPMScheduler));

        // 2. ᾱ_t, ᾱ_{t−1}, β_t (float32 scalars, see NoiseSchedule on why in C#)
        long prevTimestep = PreviousTimestep(timestep);
        float alphaProdT = _alphasCumprodValues[timestep];
        float alphaProdTPrev = prevTimestep >= 0 ? _alphasCumprodValues[prevTimestep] : 1f;
        float betaProdT = 1f - alphaProdT;
        float betaProdTPrev = 1f - alphaProdTPrev;
        float currentAlphaT = alphaProdT / alphaProdTPrev;
        float currentBetaT = 1f - currentAlphaT;

        // 3. predicted x0 (formula (15) of the DDPM paper for epsilon)
        var predOriginalSample = Config.PredictionType switch
        {
            "epsilon" => (sample - modelOutput * MathF.Sqrt(betaProdT)) / MathF.Sqrt(alphaProdT),
            "sample" => modelOutput.alias(),
            _ => sample * MathF.Sqrt(alphaProdT) - modelOutput * MathF.Sqrt(betaProdT), // v_prediction
        };

        // 4. clip x0
        if (Config.ClipSample)
            predOriginalSample = predOriginalSample.clamp(-Config.ClipSampleRange, Config.ClipSampleRange);

        // 5. posterior mean μ̃_t = coeff_x0 · x0 + coeff_xt · x_t (formula (7))
        float predOriginalSampleCoeff = MathF.Sqrt(alphaProdTPrev) * currentBetaT / betaProdT;
        float currentSampleCoeff = MathF.Sqrt(currentAlphaT) * betaProdTPrev / betaProdT;
        var predPrevSample = predOriginalSample * predOriginalSampleCoeff + sample * currentSampleCoeff;

        // 6. add noise
        if (timestep > 0)
        {
            var noise = varianceNoise ?? torch.randn(modelOutput.shape, modelOutput.dtype, modelOutput.device, generator: generator);
            var (variance, _) = PosteriorVariance(timestep);
            var scaledNoise = Config.VarianceType switch
            {
                "fixed_small_log" => noise * MathF.Exp(0.5f * MathF.Log(variance)), // a standard deviation already
                "fixed_large" => noise * MathF.Sqrt(currentBetaT),
                "learned" => RequirePredictedVariance(predictedVariance).pow(0.5) * noise,
                "learned_range" => (GetVariance(timestep, predictedVariance) * 0.5).exp() * noise, // a log-variance
                _ => noise * MathF.Sqrt(variance), // fixed_small, or null as in diffusers
            };
            predPrevSample = predPrevSample + scaledNoise;
        }

        return new SchedulerStepResult(predPrevSample.MoveToOuterDisposeScope(), predOriginalSample.MoveToOuterDisposeScope());
    }

    public Tensor AddNoise(Tensor original, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.AddNoise(_alphasCumprod, original, noise, timesteps);

    public Tensor GetVelocity(Tensor sample, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.GetVelocity(_alphasCumprod, sample, noise, timesteps);

    public IDiffusionScheduler CloneFresh()
    {
        var clone = new DDPMScheduler(Config);
        if (NumInferenceSteps is int steps) clone.SetTimesteps(steps);
        return clone;
    }

    private void CheckTimestep(long timestep)
    {
        if (timestep < 0 || timestep >= _alphasCumprod.shape[0])
            throw new ArgumentOutOfRangeException(nameof(timestep), $"DDPMScheduler: timestep {timestep} is outside [0, {_alphasCumprod.shape[0] - 1}].");
    }

    public void Dispose()
    {
        _betas.Dispose();
        _alphasCumprod.Dispose();
    }
}
