using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>
/// diffusers' PNDMScheduler with skip_prk_steps = true: the pseudo linear multistep (PLMS) method of Liu et al. 2022
/// ("Pseudo Numerical Methods for Diffusion Models on Manifolds"), Stable Diffusion 1.x's default scheduler.
/// <para>
/// Each step moves x_t to x_{t−δ} (δ = num_train_timesteps / n, integer division) with the transfer of formula (9)
/// of the paper, fed not the model's ε but a linear multistep combination of the last ε's (Adams-Bashforth
/// coefficients 1; (3, −1)/2; (23, −16, 5)/12; (55, −59, 37, −9)/24). PLMS has no history at the start, so — as
/// diffusers does — the first timestep's step is taken twice: step 0 is plain Euler from t0; step 1 (given the
/// repeated timestep t1) redoes t0 → t1 from the same x_{t0} with the mean of the two ε's (a Heun step), and then
/// multistep proper starts. That is why <see cref="Timesteps"/> holds n + 1 entries with the second one repeated.
/// </para>
/// <para>
/// Multistep: it keeps the ε history and a step counter. Use <see cref="Reset"/> or <see cref="CloneFresh"/> before a
/// new trajectory. skip_prk_steps = false (the Runge-Kutta warm-up, 12 model calls) is not implemented and rejected.
/// Keys diffusers' PNDM does not take (clip_sample, thresholding, rescale_betas_zero_snr, ...) are ignored as diffusers
/// ignores them.
/// </para>
/// </summary>
public sealed class PNDMScheduler : IDiffusionScheduler
{
    public static readonly string[] SupportedPredictionTypes = ["epsilon", "v_prediction"];

    private readonly Tensor _betas;
    private readonly Tensor _alphasCumprod;
    private readonly float[] _alphasCumprodValues;
    private readonly float _finalAlphaCumprod;
    private long[] _timesteps;
    private readonly List<Tensor> _ets = [];  // the model outputs PLMS combines, oldest first (at most 4)
    private Tensor? _curSample;               // x_{t0}, kept for the second (Heun) pass of the first step

    public SchedulerConfig Config { get; }
    public Tensor Betas => _betas;
    public Tensor AlphasCumprod => _alphasCumprod;
    /// <summary>diffusers' <c>plms_timesteps</c>: the spaced timesteps, descending, with the second one repeated. A copy.</summary>
    public long[] Timesteps => (long[])_timesteps.Clone();
    public int? NumInferenceSteps { get; private set; }
    /// <summary>Steps taken since <see cref="SetTimesteps"/> or <see cref="Reset"/> (diffusers' <c>counter</c>).</summary>
    public int Counter { get; private set; }

    public PNDMScheduler(SchedulerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        const string name = nameof(PNDMScheduler);
        if (!SupportedPredictionTypes.Contains(config.PredictionType))
            throw new NotSupportedException($"{name}: prediction_type '{config.PredictionType}' is not supported. Supported: {string.Join(", ", SupportedPredictionTypes)} (as in diffusers).");
        SchedulerValidation.CheckSpacing(config, name);
        if (!config.SkipPrkSteps)
            throw new NotSupportedException(
                $"{name}: skip_prk_steps = false (PNDM's Runge-Kutta warm-up) is not supported; only the PLMS path is implemented. " +
                "Set \"skip_prk_steps\": true, as Stable Diffusion 1.x's scheduler config does, or choose another scheduler (e.g. ddim).");
        Config = config;

        using var scope = torch.NewDisposeScope();
        // diffusers' PNDM takes no rescale_betas_zero_snr: a config that has it (written for DDIM) keeps the plain betas.
        _betas = NoiseSchedule.Betas(config with { RescaleBetasZeroSnr = false }).DetachFromDisposeScope();
        _alphasCumprod = NoiseSchedule.AlphasCumprod(_betas).DetachFromDisposeScope();
        _alphasCumprodValues = _alphasCumprod.data<float>().ToArray();
        // After the last step there is no previous ᾱ: 1 (set_alpha_to_one) or ᾱ_0 (diffusers' PNDM default).
        _finalAlphaCumprod = config.SetAlphaToOne ? 1f : _alphasCumprodValues[0];
        _timesteps = DDPMScheduler.DefaultTimesteps(config.NumTrainTimesteps);
    }

    /// <summary>
    /// diffusers' PNDM <c>set_timesteps</c> with skip_prk_steps: DDIM's spacing (leading <c>i · (T / n) + steps_offset</c>,
    /// trailing, linspace — <see cref="NoiseSchedule.SpacedTimesteps"/>), descending, with the second timestep repeated
    /// (<c>[901, 801, 801, 701, ..., 1]</c> for SD 1.x at 10 steps). Resets the multistep state.
    /// </summary>
    public void SetTimesteps(int numInferenceSteps)
    {
        int trainSteps = Config.NumTrainTimesteps;
        SchedulerValidation.CheckStepCount(numInferenceSteps, trainSteps, nameof(PNDMScheduler));
        long[] spaced = NoiseSchedule.SpacedTimesteps(Config, numInferenceSteps);
        foreach (long t in spaced)
        {
            if (t < 0 || t >= trainSteps)
                throw new ArgumentException($"PNDMScheduler: {Config.TimestepSpacing} spacing with {numInferenceSteps} steps (steps_offset {Config.StepsOffset}) gives timestep {t}, outside [0, {trainSteps - 1}]. Choose another step count or spacing.");
        }
        // concat(ts[:-1], ts[-2:-1], ts[-1:])[::-1] on the ascending ts: the second-largest timestep twice.
        _timesteps = spaced.Length == 1 ? spaced : [spaced[0], spaced[1], .. spaced[1..]];
        NumInferenceSteps = numInferenceSteps;
        Reset();
    }

    /// <summary>Forgets the ε history, the kept sample and the counter, for a new trajectory on the same timesteps.</summary>
    public void Reset()
    {
        foreach (var e in _ets) e.Dispose();
        _ets.Clear();
        _curSample?.Dispose();
        _curSample = null;
        Counter = 0;
    }

    /// <summary>
    /// One PLMS step (diffusers' <c>step_plms</c>). Deterministic: <paramref name="varianceNoise"/> and
    /// <paramref name="generator"/> are unused. diffusers' PNDM returns no x0; <see cref="SchedulerStepResult.PredOriginalSample"/>
    /// is the x0 implied by the combined ε at the timestep the update starts from.
    /// </summary>
    public SchedulerStepResult Step(Tensor modelOutput, long timestep, Tensor sample, Tensor? varianceNoise = null, torch.Generator? generator = null)
    {
        int steps = NumInferenceSteps
            ?? throw new InvalidOperationException("PNDMScheduler: call SetTimesteps(numInferenceSteps) before Step; the step size depends on it.");
        if (Counter >= _timesteps.Length)
            throw new InvalidOperationException($"PNDMScheduler: all {_timesteps.Length} steps are done. Call Reset() (or use CloneFresh()) to start a new trajectory.");
        SchedulerValidation.CheckSameShape(modelOutput, sample, nameof(PNDMScheduler));
        using var scope = torch.NewDisposeScope();

        // 1. where the update goes: t → t − δ; the repeated step (counter 1) redoes t + δ → t
        long delta = Config.NumTrainTimesteps / steps;
        long prevTimestep = timestep - delta;
        if (Counter != 1)
        {
            while (_ets.Count > 3)
            {
                _ets[0].Dispose();
                _ets.RemoveAt(0);
            }
            // The history outlives the caller's dispose scope: keep a handle of our own.
            _ets.Add(modelOutput.alias().DetachFromDisposeScope());
        }
        else
        {
            prevTimestep = timestep;
            timestep += delta;
        }

        // 2. the linear multistep combination of the ε history (Adams-Bashforth of growing order)
        Tensor eps;
        Tensor? consumedSample = null;
        int n = _ets.Count;
        if (n == 1 && Counter == 0)
        {
            eps = modelOutput;
            _curSample = sample.alias().DetachFromDisposeScope();
        }
        else if (n == 1 && Counter == 1)
        {
            eps = (modelOutput + _ets[^1]) / 2;
            sample = _curSample ?? throw new InvalidOperationException("PNDMScheduler: the first step's sample is missing; call Reset() and start the trajectory again.");
            consumedSample = _curSample;
            _curSample = null;
        }
        else if (n == 2)
            eps = (_ets[^1] * 3 - _ets[^2]) / 2;
        else if (n == 3)
            eps = (_ets[^1] * 23 - _ets[^2] * 16 + _ets[^3] * 5) / 12;
        else
            eps = (_ets[^1] * 55 - _ets[^2] * 59 + _ets[^3] * 37 - _ets[^4] * 9) * (1.0 / 24);

        // 3. x_{t−δ} by formula (9)
        var (prevSample, predOriginalSample) = PreviousSample(sample, timestep, prevTimestep, eps);
        consumedSample?.Dispose();
        Counter++;
        return new SchedulerStepResult(prevSample.MoveToOuterDisposeScope(), predOriginalSample.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Formula (9) of the PNDM paper, in diffusers' float32 order of operations:
    /// x_{t−δ} = sqrt(ᾱ_{t−δ}/ᾱ_t)·x_t − (ᾱ_{t−δ} − ᾱ_t)·ε / (ᾱ_t·sqrt(1 − ᾱ_{t−δ}) + sqrt(ᾱ_t(1 − ᾱ_t)ᾱ_{t−δ})).
    /// A v prediction is turned into ε first: ε = sqrt(ᾱ_t)·v + sqrt(1 − ᾱ_t)·x_t.
    /// </summary>
    private (Tensor Prev, Tensor X0) PreviousSample(Tensor sample, long timestep, long prevTimestep, Tensor eps)
    {
        if (timestep < 0 || timestep >= _alphasCumprodValues.Length)
            throw new ArgumentOutOfRangeException(nameof(timestep), $"PNDMScheduler: timestep {timestep} is outside [0, {_alphasCumprodValues.Length - 1}].");
        float alphaProdT = _alphasCumprodValues[timestep];
        float alphaProdTPrev = prevTimestep >= 0 ? _alphasCumprodValues[prevTimestep] : _finalAlphaCumprod;
        float betaProdT = 1f - alphaProdT;
        float betaProdTPrev = 1f - alphaProdTPrev;

        if (Config.PredictionType == "v_prediction")
            eps = eps * MathF.Sqrt(alphaProdT) + sample * MathF.Sqrt(betaProdT);

        float sampleCoeff = MathF.Sqrt(alphaProdTPrev / alphaProdT);
        float modelOutputDenomCoeff = alphaProdT * MathF.Sqrt(betaProdTPrev) + MathF.Sqrt(alphaProdT * betaProdT * alphaProdTPrev);
        var prevSample = sample * sampleCoeff - eps * (alphaProdTPrev - alphaProdT) / modelOutputDenomCoeff;
        var predOriginalSample = (sample - eps * MathF.Sqrt(betaProdT)) / MathF.Sqrt(alphaProdT);
        return (prevSample, predOriginalSample);
    }

    public Tensor AddNoise(Tensor original, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.AddNoise(_alphasCumprod, original, noise, timesteps);

    /// <summary>DDPM's v-prediction target (diffusers' PNDM has no get_velocity; a v model was trained against this one).</summary>
    public Tensor GetVelocity(Tensor sample, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.GetVelocity(_alphasCumprod, sample, noise, timesteps);

    public IDiffusionScheduler CloneFresh()
    {
        var clone = new PNDMScheduler(Config);
        if (NumInferenceSteps is int steps) clone.SetTimesteps(steps);
        return clone;
    }

    public void Dispose()
    {
        Reset();
        _betas.Dispose();
        _alphasCumprod.Dispose();
    }
}
