using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>
/// diffusers' EulerDiscreteScheduler: Euler's method on the probability-flow ODE in the variance-exploding
/// parametrisation of Karras et al. 2022 (k-diffusion's <c>sample_euler</c>). The latent is x = x0 + σ·ε with
/// σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), so sampling starts from noise scaled by <see cref="InitNoiseSigma"/>, the model is fed
/// x / sqrt(σ² + 1) (<see cref="ScaleModelInput"/>, the variance-preserving x_t it was trained on), and each step is
/// x ← x + (x − x0) / σ · (σ_next − σ).
/// <para>
/// The inference sigmas are the training sigmas linearly interpolated at the (possibly fractional) timesteps, plus a
/// final 0 (or sigma_min). Churn (s_churn, s_tmin, s_tmax, s_noise: step arguments in diffusers, constructor arguments
/// here) adds noise to raise σ to σ̂ = σ(1 + γ) before the step, as in Karras et al.'s Algorithm 2; the default
/// s_churn 0 is the plain ODE solver.
/// </para>
/// <para>
/// Stateful like diffusers: a step index starts at the position of the first timestep given to
/// <see cref="ScaleModelInput"/> or <see cref="Step"/> and advances by one per <see cref="Step"/>. Use
/// <see cref="Reset"/> or <see cref="CloneFresh"/> before a new trajectory. Not implemented (rejected with a clear
/// error): Karras / exponential / beta sigmas, log_linear interpolation, continuous timesteps. Keys diffusers' Euler
/// does not take (clip_sample, thresholding, ...) are ignored as diffusers ignores them. Its twin
/// <see cref="EulerAncestralDiscreteScheduler"/> repeats the sigma set-up, index and scaling code.
/// </para>
/// </summary>
public sealed class EulerDiscreteScheduler : IDiffusionScheduler
{
    private readonly Tensor _betas;
    private readonly Tensor _alphasCumprod;
    private readonly float[] _trainSigmas;  // sqrt((1 − ᾱ) / ᾱ) [T], ascending in t
    private float[] _sigmas;                // [n + 1]: the sigmas of the timesteps and the final one
    private float[] _timestepValues;        // diffusers' float32 timesteps [n]
    private long[] _timesteps;              // the same, rounded to the nearest integer

    public SchedulerConfig Config { get; }
    public Tensor Betas => _betas;
    /// <summary>ᾱ; with rescale_betas_zero_snr its last value is 2^−24 instead of 0, as in diffusers.</summary>
    public Tensor AlphasCumprod => _alphasCumprod;
    /// <summary>The float32 sigmas [n + 1] (before <see cref="SetTimesteps"/>: the training sigmas, descending, and 0). A copy.</summary>
    public float[] Sigmas => (float[])_sigmas.Clone();
    /// <summary>diffusers' timesteps rounded half to even; with linspace spacing they may be fractional (see <see cref="ModelTimesteps"/>).</summary>
    public long[] Timesteps => (long[])_timesteps.Clone();
    /// <summary>diffusers' float32 timesteps, what the model is conditioned on (978.6122 for the second of 50 linspace steps).</summary>
    public double[] ModelTimesteps => _timestepValues.Select(t => (double)t).ToArray();
    public int? NumInferenceSteps { get; private set; }
    /// <summary>The index into <see cref="Timesteps"/> of the next step; null until the first <see cref="ScaleModelInput"/> or <see cref="Step"/>.</summary>
    public int? StepIndex { get; private set; }

    /// <summary>Karras et al.'s S_churn: total extra noise over the trajectory; 0 (default) is the deterministic ODE solver.</summary>
    public double SChurn { get; }
    /// <summary>Churn applies only to steps with s_tmin ≤ σ ≤ s_tmax.</summary>
    public double STmin { get; }
    public double STmax { get; }
    /// <summary>Scale of the churn noise (S_noise); default 1.</summary>
    public double SNoise { get; }

    /// <summary>
    /// σ of the initial noise: the largest inference sigma for linspace and trailing spacing; sqrt(σ_max² + 1) for
    /// leading, as diffusers computes it (float32).
    /// </summary>
    public double InitNoiseSigma
    {
        get
        {
            float max = _sigmas.Max();
            return Config.TimestepSpacing is "linspace" or "trailing" ? max : MathF.Sqrt(max * max + 1f);
        }
    }

    public EulerDiscreteScheduler(SchedulerConfig config, double sChurn = 0.0, double sTmin = 0.0, double sTmax = double.PositiveInfinity, double sNoise = 1.0)
    {
        ArgumentNullException.ThrowIfNull(config);
        const string name = nameof(EulerDiscreteScheduler);
        SchedulerValidation.CheckPredictionType(config, name);
        SchedulerValidation.CheckSpacing(config, name);
        if (config.InterpolationType != "linear")
            throw new NotSupportedException($"{name}: interpolation_type '{config.InterpolationType}' is not supported; set \"interpolation_type\": \"linear\" (diffusers' default).");
        if (config.TimestepType != "discrete")
            throw new NotSupportedException($"{name}: timestep_type '{config.TimestepType}' is not supported; set \"timestep_type\": \"discrete\" (diffusers' default).");
        if (config.FinalSigmasType is not ("zero" or "sigma_min"))
            throw new NotSupportedException($"{name}: final_sigmas_type '{config.FinalSigmasType}' is not supported. Supported: zero, sigma_min.");
        foreach (var (flag, key) in new[]
                 {
                     (config.UseKarrasSigmas, "use_karras_sigmas"), (config.UseExponentialSigmas, "use_exponential_sigmas"),
                     (config.UseBetaSigmas, "use_beta_sigmas"),
                 })
        {
            if (flag)
                throw new NotSupportedException($"{name}: {key} = true is not supported; set it to false to use the schedule's own sigmas.");
        }
        if (!(sChurn >= 0) || double.IsInfinity(sChurn))
            throw new ArgumentOutOfRangeException(nameof(sChurn), $"{name}: s_churn must be a finite number >= 0 (got {sChurn}).");
        if (double.IsNaN(sTmin) || double.IsNaN(sTmax) || sTmin > sTmax)
            throw new ArgumentOutOfRangeException(nameof(sTmin), $"{name}: s_tmin ({sTmin}) must not exceed s_tmax ({sTmax}).");
        if (!(sNoise >= 0) || double.IsInfinity(sNoise))
            throw new ArgumentOutOfRangeException(nameof(sNoise), $"{name}: s_noise must be a finite number >= 0 (got {sNoise}).");
        Config = config;
        SChurn = sChurn;
        STmin = sTmin;
        STmax = sTmax;
        SNoise = sNoise;

        using var scope = torch.NewDisposeScope();
        _betas = NoiseSchedule.Betas(config).DetachFromDisposeScope();
        var alphasCumprod = NoiseSchedule.AlphasCumprod(_betas);
        // Zero terminal SNR would make σ infinite at the last training step: diffusers sets ᾱ to 2^−24 there.
        if (config.RescaleBetasZeroSnr)
            alphasCumprod[-1] = torch.tensor(MathF.Pow(2, -24));
        _alphasCumprod = alphasCumprod.DetachFromDisposeScope();
        _trainSigmas = NoiseSchedule.TrainSigmas(_alphasCumprod.data<float>().ToArray());
        // Before SetTimesteps diffusers holds the training schedule: timesteps T−1 .. 0, their sigmas and a final 0.
        _sigmas = [.. _trainSigmas.Reverse(), 0f];
        _timesteps = DDPMScheduler.DefaultTimesteps(config.NumTrainTimesteps);
        _timestepValues = _timesteps.Select(t => (float)t).ToArray();
    }

    /// <summary>
    /// diffusers' Euler <c>set_timesteps</c>: the timesteps (<see cref="NoiseSchedule.SigmaTimesteps"/>: linspace
    /// unrounded; leading with steps_offset; trailing), σ = np.interp(t, 0..T−1, training sigmas) at each, then the final
    /// sigma (0, or σ of timestep 0 for final_sigmas_type sigma_min). Resets the step index.
    /// </summary>
    public void SetTimesteps(int numInferenceSteps)
    {
        int trainSteps = Config.NumTrainTimesteps;
        SchedulerValidation.CheckStepCount(numInferenceSteps, trainSteps, nameof(EulerDiscreteScheduler));
        float[] timesteps = NoiseSchedule.SigmaTimesteps(Config, numInferenceSteps);
        foreach (float t in timesteps)
        {
            if (t < 0 || t > trainSteps - 1)
                throw new ArgumentException($"EulerDiscreteScheduler: {Config.TimestepSpacing} spacing with {numInferenceSteps} steps (steps_offset {Config.StepsOffset}) gives timestep {t}, outside [0, {trainSteps - 1}]. Choose another step count or spacing.");
        }
        float sigmaLast = Config.FinalSigmasType == "sigma_min" ? _trainSigmas[0] : 0f;
        _sigmas = [.. timesteps.Select(t => (float)NoiseSchedule.NumpyInterpAtIndex(t, _trainSigmas)), sigmaLast];
        _timestepValues = timesteps;
        _timesteps = NoiseSchedule.NumpyRoundToInt64(timesteps.Select(t => (double)t));
        NumInferenceSteps = numInferenceSteps;
        Reset();
    }

    /// <summary>Forgets the step index, for a new trajectory on the same timesteps.</summary>
    public void Reset() => StepIndex = null;

    /// <summary>x / sqrt(σ² + 1) with the σ of the current step (the step index starts from <paramref name="timestep"/>).</summary>
    public Tensor ScaleModelInput(Tensor sample, long timestep)
    {
        int stepIndex = CurrentStepIndex(timestep);
        float sigma = _sigmas[stepIndex];
        return sample / MathF.Sqrt(sigma * sigma + 1f);
    }

    /// <summary>
    /// One Euler step from σ (raised to σ̂ by churn, when on) to the next sigma, in float32 as diffusers. Churn noise is
    /// <paramref name="varianceNoise"/> when given, else drawn from <paramref name="generator"/>; without churn neither is used.
    /// </summary>
    public SchedulerStepResult Step(Tensor modelOutput, long timestep, Tensor sample, Tensor? varianceNoise = null, torch.Generator? generator = null)
    {
        int stepIndex = CurrentStepIndex(timestep);
        SchedulerValidation.CheckSameShape(modelOutput, sample, nameof(EulerDiscreteScheduler));
        if (varianceNoise is not null && generator is not null)
            throw new ArgumentException("EulerDiscreteScheduler: pass either a generator or varianceNoise, not both.");
        using var scope = torch.NewDisposeScope();

        // 1. churn: γ = min(s_churn / n, √2 − 1) inside [s_tmin, s_tmax], σ̂ = σ(γ + 1)
        float sigma = _sigmas[stepIndex];
        double gamma = STmin <= sigma && sigma <= STmax ? Math.Min(SChurn / (_sigmas.Length - 1), Math.Sqrt(2) - 1) : 0.0;
        float sigmaHat = sigma * (float)(gamma + 1);
        var x = sample.dtype == ScalarType.Float32 ? sample : sample.to_type(ScalarType.Float32);
        if (gamma > 0)
        {
            var noise = varianceNoise ?? torch.randn(modelOutput.shape, modelOutput.dtype, modelOutput.device, generator: generator);
            x = x + noise * SNoise * MathF.Sqrt(sigmaHat * sigmaHat - sigma * sigma);
        }

        // 2. predicted x0
        Tensor predOriginalSample = Config.PredictionType switch
        {
            "epsilon" => x - modelOutput * sigmaHat,
            // v is predicted from the scaled input x/sqrt(σ²+1); diffusers uses σ, not σ̂, here
            "v_prediction" => modelOutput * (-sigma / MathF.Sqrt(sigma * sigma + 1f)) + x / (sigma * sigma + 1f),
            _ => modelOutput.alias(), // sample
        };

        // 3. Euler: dx/dσ = (x − x0) / σ̂, over dt = σ_next − σ̂
        var derivative = (x - predOriginalSample) / sigmaHat;
        float dt = _sigmas[stepIndex + 1] - sigmaHat;
        var prevSample = x + derivative * dt;
        if (prevSample.dtype != modelOutput.dtype) prevSample = prevSample.to_type(modelOutput.dtype);
        StepIndex = stepIndex + 1;

        return new SchedulerStepResult(prevSample.MoveToOuterDisposeScope(), predOriginalSample.MoveToOuterDisposeScope());
    }

    /// <summary>The step index (initialised from <paramref name="timestep"/> on first use), checked against the schedule.</summary>
    private int CurrentStepIndex(long timestep)
    {
        if (NumInferenceSteps is null)
            throw new InvalidOperationException("EulerDiscreteScheduler: call SetTimesteps(numInferenceSteps) before ScaleModelInput or Step.");
        StepIndex ??= IndexForTimestep(timestep);
        int stepIndex = StepIndex.Value;
        if (stepIndex >= _timesteps.Length)
            throw new InvalidOperationException($"EulerDiscreteScheduler: all {_timesteps.Length} steps are done. Call Reset() (or use CloneFresh()) to start a new trajectory.");
        return stepIndex;
    }

    /// <summary>diffusers' <c>index_for_timestep</c>: the position in <see cref="Timesteps"/>; the second one if it occurs twice.</summary>
    private int IndexForTimestep(long timestep)
    {
        var matches = Enumerable.Range(0, _timesteps.Length).Where(i => _timesteps[i] == timestep).Take(2).ToArray();
        return matches.Length switch
        {
            0 => throw new ArgumentException($"EulerDiscreteScheduler: timestep {timestep} is not in the schedule ({string.Join(", ", _timesteps.Take(5))}, ...); pass one of Timesteps."),
            1 => matches[0],
            _ => matches[1],
        };
    }

    /// <summary>
    /// diffusers' Euler <c>add_noise</c>: x0 + σ·noise with the sigma of each timestep's position in <see cref="Timesteps"/>
    /// — the variance-exploding latent the sampler starts from (for img2img), not the variance-preserving DDPM one.
    /// </summary>
    public Tensor AddNoise(Tensor original, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var sigmas = timesteps.to_type(ScalarType.Int64).cpu().flatten().data<long>().ToArray()
            .Select(t => _sigmas[IndexForTimestep(t)]).ToArray();
        var shape = new long[Math.Max(1, (int)original.dim())];
        Array.Fill(shape, 1L);
        shape[0] = sigmas.Length;
        var sigma = torch.tensor(sigmas).reshape(shape).to(original.dtype, original.device);
        return (original + noise * sigma).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// DDPM's v-prediction target at the training timesteps (diffusers' Euler indexes ᾱ by schedule position instead,
    /// which only agrees with the model's training target before <c>set_timesteps</c>).
    /// </summary>
    public Tensor GetVelocity(Tensor sample, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.GetVelocity(_alphasCumprod, sample, noise, timesteps);

    public IDiffusionScheduler CloneFresh()
    {
        var clone = new EulerDiscreteScheduler(Config, SChurn, STmin, STmax, SNoise);
        if (NumInferenceSteps is int steps) clone.SetTimesteps(steps);
        return clone;
    }

    public void Dispose()
    {
        _betas.Dispose();
        _alphasCumprod.Dispose();
    }
}
