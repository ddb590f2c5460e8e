using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>
/// diffusers' DDIMScheduler (Song et al. 2020). <see cref="Step"/> is a pure function of its arguments (the step count
/// from <see cref="SetTimesteps"/> aside) built from differentiable torch ops, so a step can be recomputed and
/// back-propagated through. <see cref="Eta"/> 0 is deterministic DDIM; 1 gives DDPM-like noise.
/// <para>
/// As in diffusers, the previous timestep is always <c>t − num_train_timesteps / n</c> (integer division),
/// whatever the spacing — with trailing or linspace spacing that is not necessarily the next entry of <see cref="Timesteps"/>.
/// </para>
/// </summary>
public sealed class DDIMScheduler : IDiffusionScheduler
{
    private readonly Tensor _betas;
    private readonly Tensor _alphasCumprod;
    private readonly float[] _alphasCumprodValues;
    private readonly float _finalAlphaCumprod;
    private long[] _timesteps;

    public SchedulerConfig Config { get; }
    public Tensor Betas => _betas;
    public Tensor AlphasCumprod => _alphasCumprod;
    public long[] Timesteps => (long[])_timesteps.Clone();
    public int? NumInferenceSteps { get; private set; }

    /// <summary>Weight of the noise in each step (diffusers' <c>step(eta=...)</c>); 0 = deterministic.</summary>
    public double Eta { get; }

    /// <summary>Recompute the noise prediction from the clipped x0 (diffusers' <c>use_clipped_model_output</c>). Default false.</summary>
    public bool UseClippedModelOutput { get; init; }

    public DDIMScheduler(SchedulerConfig config, double eta = 0.0)
    {
        ArgumentNullException.ThrowIfNull(config);
        SchedulerValidation.RejectThresholding(config, nameof(DDIMScheduler));
        SchedulerValidation.CheckPredictionType(config, nameof(DDIMScheduler));
        SchedulerValidation.CheckSpacing(config, nameof(DDIMScheduler));
        if (!(eta >= 0) || double.IsInfinity(eta))
            throw new ArgumentOutOfRangeException(nameof(eta), $"DDIMScheduler: eta must be a finite number >= 0 (got {eta}).");
        Config = config;
        Eta = eta;

        using var scope = torch.NewDisposeScope();
        _betas = NoiseSchedule.Betas(config).DetachFromDisposeScope();
        _alphasCumprod = NoiseSchedule.AlphasCumprod(_betas).DetachFromDisposeScope();
        _alphasCumprodValues = _alphasCumprod.data<float>().ToArray();
        // At the last step there is no previous ᾱ: 1 (set_alpha_to_one) or ᾱ_0.
        _finalAlphaCumprod = config.SetAlphaToOne ? 1f : _alphasCumprodValues[0];
        _timesteps = DDPMScheduler.DefaultTimesteps(config.NumTrainTimesteps);
    }

    /// <summary>
    /// diffusers' DDIM <c>set_timesteps</c>: leading <c>i · (T / n) + steps_offset</c>; trailing
    /// <c>round(arange(T, 0, −T/n)) − 1</c>; linspace <c>round(linspace(0, T − 1, n))</c>, all descending.
    /// steps_offset applies to leading only.
    /// </summary>
    public void SetTimesteps(int numInferenceSteps)
    {
        SchedulerValidation.CheckStepCount(numInferenceSteps, Config.NumTrainTimesteps, nameof(DDIMScheduler));
        long[] timesteps = NoiseSchedule.SpacedTimesteps(Config, numInferenceSteps);
        _timesteps = timesteps;
        NumInferenceSteps = numInferenceSteps;
    }

    /// <summary><c>t − num_train_timesteps / n</c> (negative after the last step). Needs <see cref="SetTimesteps"/>.</summary>
    public long PreviousTimestep(long timestep) => timestep - Config.NumTrainTimesteps / RequireStepCount();

    public SchedulerStepResult Step(Tensor modelOutput, long timestep, Tensor sample, Tensor? varianceNoise = null, torch.Generator? generator = null) =>
        Step(modelOutput, timestep, sample, Eta, varianceNoise, generator);

    /// <summary>One DDIM step (formula (12) of the DDIM paper) with an explicit <paramref name="eta"/>.</summary>
    public SchedulerStepResult Step(Tensor modelOutput, long timestep, Tensor sample, double eta, Tensor? varianceNoise = null, torch.Generator? generator = null)
    {
        long prevTimestep = PreviousTimestep(timestep);
        if (timestep < 0 || timestep >= _alphasCumprod.shape[0])
            throw new ArgumentOutOfRangeException(nameof(timestep), $"DDIMScheduler: timestep {timestep} is outside [0, {_alphasCumprod.shape[0] - 1}].");
        SchedulerValidation.CheckSameShape(modelOutput, sample, nameof(DDIMScheduler));
        if (eta > 0 && varianceNoise is not null && generator is not null)
            throw new ArgumentException("DDIMScheduler: pass either a generator or varianceNoise, not both.");
        using var scope = torch.NewDisposeScope();

        // 1. ᾱ_t and ᾱ_{t−1} (float32 scalars, see NoiseSchedule on why in C#)
        float alphaProdT = _alphasCumprodValues[timestep];
        float alphaProdTPrev = prevTimestep >= 0 ? _alphasCumprodValues[prevTimestep] : _finalAlphaCumprod;
        float betaProdT = 1f - alphaProdT;
        float sqrtAlphaProdT = MathF.Sqrt(alphaProdT), sqrtBetaProdT = MathF.Sqrt(betaProdT);

        // 2. predicted x0 and ε
        Tensor predOriginalSample, predEpsilon;
        switch (Config.PredictionType)
        {
            case "epsilon":
                predOriginalSample = (sample - modelOutput * sqrtBetaProdT) / sqrtAlphaProdT;
                predEpsilon = modelOutput;
                break;
            case "sample":
                predOriginalSample = modelOutput.alias();
                predEpsilon = (sample - predOriginalSample * sqrtAlphaProdT) / sqrtBetaProdT;
                break;
            default: // v_prediction
                predOriginalSample = sample * sqrtAlphaProdT - modelOutput * sqrtBetaProdT;
                predEpsilon = modelOutput * sqrtAlphaProdT + sample * sqrtBetaProdT;
                break;
        }

        // 3. clip x0
        if (Config.ClipSample)
            predOriginalSample = predOriginalSample.clamp(-Config.ClipSampleRange, Config.ClipSampleRange);

        // 4. σ_t(η) = η · sqrt((1 − ᾱ_{t−1}) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_{t−1}))  (formula (16))
        float betaProdTPrev = 1f - alphaProdTPrev;
        float variance = betaProdTPrev / betaProdT * (1f - alphaProdT / alphaProdTPrev);
        float stdDevT = (float)eta * MathF.Sqrt(variance);

        if (UseClippedModelOutput)
            predEpsilon = (sample - predOriginalSample * sqrtAlphaProdT) / sqrtBetaProdT;

        // 5. direction pointing to x_t, then x_{t−1} without noise
        var predSampleDirection = predEpsilon * MathF.Sqrt(1f - alphaProdTPrev - stdDevT * stdDevT);
        var prevSample = predOriginalSample * MathF.Sqrt(alphaProdTPrev) + predSampleDirection;

        // 6. noise
        if (eta > 0)
        {
            var noise = varianceNoise ?? torch.randn(modelOutput.shape, modelOutput.dtype, modelOutput.device, generator: generator);
            prevSample = prevSample + noise * stdDevT;
        }

        return new SchedulerStepResult(prevSample.MoveToOuterDisposeScope(), predOriginalSample.MoveToOuterDisposeScope());
    }

    public Tensor AddNoise(Tensor original, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.AddNoise(_alphasCumprod, original, noise, timesteps);

    public Tensor GetVelocity(Tensor sample, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.GetVelocity(_alphasCumprod, sample, noise, timesteps);

    public IDiffusionScheduler CloneFresh()
    {
        var clone = new DDIMScheduler(Config, Eta) { UseClippedModelOutput = UseClippedModelOutput };
        if (NumInferenceSteps is int steps) clone.SetTimesteps(steps);
        return clone;
    }

    private int RequireStepCount() => NumInferenceSteps
        ?? throw new InvalidOperationException("DDIMScheduler: call SetTimesteps(numInferenceSteps) before Step; the step size depends on it.");

    public void Dispose()
    {
        _betas.Dispose();
        _alphasCumprod.Dispose();
    }
}
