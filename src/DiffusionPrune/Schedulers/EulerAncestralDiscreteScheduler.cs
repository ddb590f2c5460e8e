using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>
/// diffusers' EulerAncestralDiscreteScheduler (k-diffusion's <c>sample_euler_ancestral</c>): each step goes from σ to
/// the next sigma σ' by splitting σ'² into a deterministic part σ_down² and fresh noise σ_up²,
/// σ_up = sqrt(σ'²(σ² − σ'²)/σ²), σ_down = sqrt(σ'² − σ_up²): an Euler step to σ_down, then noise·σ_up added.
/// Same sigmas, initial noise scale and input scaling as its twin <see cref="EulerDiscreteScheduler"/> (the set-up is
/// repeated here so each scheduler stays one file).
/// <para>
/// The noise of each step is <c>varianceNoise</c> when given, else drawn from the generator (or the global one); it
/// is drawn on every step, the last (σ_up = 0) included, as diffusers does, so a seeded generator is consumed alike.
/// Stateful: the step index works as in <see cref="EulerDiscreteScheduler"/>. prediction_type sample is rejected
/// (diffusers raises NotImplementedError for it). Keys diffusers' Euler-ancestral does not take are ignored.
/// </para>
/// </summary>
public sealed class EulerAncestralDiscreteScheduler : IDiffusionScheduler
{
    public static readonly string[] SupportedPredictionTypes = ["epsilon", "v_prediction"];

    private readonly Tensor _betas;
    private readonly Tensor _alphasCumprod;
    private readonly float[] _trainSigmas;  // sqrt((1 − ᾱ) / ᾱ) [T], ascending in t
    private float[] _sigmas;                // [n + 1]: the sigmas of the timesteps and a final 0
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
    /// <summary>diffusers' float32 timesteps, what the model is conditioned on.</summary>
    public double[] ModelTimesteps => _timestepValues.Select(t => (double)t).ToArray();
    public int? NumInferenceSteps { get; private set; }
    /// <summary>The index into <see cref="Timesteps"/> of the next step; null until the first <see cref="ScaleModelInput"/> or <see cref="Step"/>.</summary>
    public int? StepIndex { get; private set; }

    /// <summary>The largest sigma for linspace and trailing spacing; sqrt(σ_max² + 1) for leading (float32, as diffusers).</summary>
    public double InitNoiseSigma
    {
        get
        {
            float max = _sigmas.Max();
            return Config.TimestepSpacing is "linspace" or "trailing" ? max : MathF.Sqrt(max * max + 1f);
        }
    }

    public EulerAncestralDiscreteScheduler(SchedulerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        const string name = nameof(EulerAncestralDiscreteScheduler);
        if (!SupportedPredictionTypes.Contains(config.PredictionType))
            throw new NotSupportedException($"{name}: prediction_type '{config.PredictionType}' is not supported. Supported: {string.Join(", ", SupportedPredictionTypes)} (as in diffusers).");
        SchedulerValidation.CheckSpacing(config, name);
        Config = config;

        using var scope = torch.NewDisposeScope();
        _betas = NoiseSchedule.Betas(config).DetachFromDisposeScope();
        var alphasCumprod = NoiseSchedule.AlphasCumprod(_betas);
        // Zero terminal SNR would make σ infinite at the last training step: diffusers sets ᾱ to 2^−24 there.
        if (config.RescaleBetasZeroSnr)
            alphasCumprod[-1] = torch.tensor(MathF.Pow(2, -24));
        _alphasCumprod = alphasCumprod.DetachFromDisposeScope();
        _trainSigmas = NoiseSchedule.TrainSigmas(_alphasCumprod.data<float>().ToArray());
        _sigmas = [.. _trainSigmas.Reverse(), 0f];
        _timesteps = DDPMScheduler.DefaultTimesteps(config.NumTrainTimesteps);
        _timestepValues = _timesteps.Select(t => (float)t).ToArray();
    }

    /// <summary>As <see cref="EulerDiscreteScheduler.SetTimesteps"/> with linear interpolation and a final sigma of 0. Resets the step index.</summary>
    public void SetTimesteps(int numInferenceSteps)
    {
        int trainSteps = Config.NumTrainTimesteps;
        SchedulerValidation.CheckStepCount(numInferenceSteps, trainSteps, nameof(EulerAncestralDiscreteScheduler));
        float[] timesteps = NoiseSchedule.SigmaTimesteps(Config, numInferenceSteps);
        foreach (float t in timesteps)
        {
            if (t < 0 || t > trainSteps - 1)
                throw new ArgumentException($"EulerAncestralDiscreteScheduler: {Config.TimestepSpacing} spacing with {numInferenceSteps} steps (steps_offset {Config.StepsOffset}) gives timestep {t}, outside [0, {trainSteps - 1}]. Choose another step count or spacing.");
        }
        _sigmas = [.. timesteps.Select(t => (float)NoiseSchedule.NumpyInterpAtIndex(t, _trainSigmas)), 0f];
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

    /// <summary>One ancestral step σ → σ_down by Euler, plus σ_up·noise (float32, diffusers' order of operations).</summary>
    public SchedulerStepResult Step(Tensor modelOutput, long timestep, Tensor sample, Tensor? varianceNoise = null, torch.Generator? generator = null)
    {
        int stepIndex = CurrentStepIndex(timestep);
        SchedulerValidation.CheckSameShape(modelOutput, sample, nameof(EulerAncestralDiscreteScheduler));
        if (varianceNoise is not null && generator is not null)
            throw new ArgumentException("EulerAncestralDiscreteScheduler: pass either a generator or varianceNoise, not both.");
        if (varianceNoise is not null)
            SchedulerValidation.CheckSameShape(varianceNoise, sample, nameof(EulerAncestralDiscreteScheduler));
        using var scope = torch.NewDisposeScope();

        // 1. predicted x0
        float sigma = _sigmas[stepIndex];
        var x = sample.dtype == ScalarType.Float32 ? sample : sample.to_type(ScalarType.Float32);
        var predOriginalSample = Config.PredictionType == "epsilon"
            ? x - modelOutput * sigma
            : modelOutput * (-sigma / MathF.Sqrt(sigma * sigma + 1f)) + x / (sigma * sigma + 1f); // v_prediction

        // 2. split the next sigma into the deterministic σ_down and the fresh noise σ_up
        float sigmaFrom = sigma, sigmaTo = _sigmas[stepIndex + 1];
        float sigmaUp = MathF.Sqrt(sigmaTo * sigmaTo * (sigmaFrom * sigmaFrom - sigmaTo * sigmaTo) / (sigmaFrom * sigmaFrom));
        // σ_up ≤ σ_to exactly; where float rounding says otherwise diffusers would take sqrt of a negative (NaN): use 0.
        float sigmaDown = MathF.Sqrt(MathF.Max(0f, sigmaTo * sigmaTo - sigmaUp * sigmaUp));

        // 3. Euler to σ_down, then the noise
        var derivative = (x - predOriginalSample) / sigma;
        float dt = sigmaDown - sigma;
        var prevSample = x + derivative * dt;
        var noise = varianceNoise ?? torch.randn(modelOutput.shape, modelOutput.dtype, modelOutput.device, generator: generator);
        prevSample = prevSample + noise * sigmaUp;
        if (prevSample.dtype != modelOutput.dtype) prevSample = prevSample.to_type(modelOutput.dtype);
        StepIndex = stepIndex + 1;

        return new SchedulerStepResult(prevSample.MoveToOuterDisposeScope(), predOriginalSample.MoveToOuterDisposeScope());
    }

    private int CurrentStepIndex(long timestep)
    {
        if (NumInferenceSteps is null)
            throw new InvalidOperationException("EulerAncestralDiscreteScheduler: call SetTimesteps(numInferenceSteps) before ScaleModelInput or Step.");
        StepIndex ??= IndexForTimestep(timestep);
        int stepIndex = StepIndex.Value;
        if (stepIndex >= _timesteps.Length)
            throw new InvalidOperationException($"EulerAncestralDiscreteScheduler: all {_timesteps.Length} steps are done. Call Reset() (or use CloneFresh()) to start a new trajectory.");
        return stepIndex;
    }

    /// <summary>diffusers' <c>index_for_timestep</c>: the position in <see cref="Timesteps"/>; the second one if it occurs twice.</summary>
    private int IndexForTimestep(long timestep)
    {
        var matches = Enumerable.Range(0, _timesteps.Length).Where(i => _timesteps[i] == timestep).Take(2).ToArray();
        return matches.Length switch
        {
            0 => throw new ArgumentException($"EulerAncestralDiscreteScheduler: timestep {timestep} is not in the schedule ({string.Join(", ", _timesteps.Take(5))}, ...); pass one of Timesteps."),
            1 => matches[0],
            _ => matches[1],
        };
    }

    /// <summary>x0 + σ·noise with the sigma of each timestep's position in <see cref="Timesteps"/> (diffusers' <c>add_noise</c>).</summary>
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

    /// <summary>DDPM's v-prediction target (diffusers' Euler-ancestral has no get_velocity; a v model was trained against this one).</summary>
    public Tensor GetVelocity(Tensor sample, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.GetVelocity(_alphasCumprod, sample, noise, timesteps);

    public IDiffusionScheduler CloneFresh()
    {
        var clone = new EulerAncestralDiscreteScheduler(Config);
        if (NumInferenceSteps is int steps) clone.SetTimesteps(steps);
        return clone;
    }

    public void Dispose()
    {
        _betas.Dispose();
        _alphasCumprod.Dispose();
    }
}
