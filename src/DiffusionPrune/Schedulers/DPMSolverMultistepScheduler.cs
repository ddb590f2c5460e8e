using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>
/// diffusers' DPMSolverMultistepScheduler for algorithm_type dpmsolver++ (Lu et al. 2022): "DPM++ 2M" with
/// solver_order 2, or first order with solver_order 1; solver_type midpoint or heun; final_sigmas_type zero or
/// sigma_min; lower_order_final, euler_at_final, lambda_min_clipped; epsilon / v_prediction / sample.
/// <para>
/// Multistep: it keeps the previous x0 predictions and a step index, as diffusers does. The index starts at the
/// position of the first timestep given to <see cref="Step"/> and then advances by one per call whatever timestep is
/// passed. Use <see cref="Reset"/> or <see cref="CloneFresh"/> before a new trajectory.
/// </para>
/// Not implemented (rejected with a clear error): dpmsolver / sde-dpmsolver / sde-dpmsolver++, solver_order 3,
/// Karras / exponential / beta / Lu / flow sigmas, dynamic shifting, thresholding.
/// </summary>
public sealed class DPMSolverMultistepScheduler : IDiffusionScheduler
{
    private readonly Tensor _betas;
    private readonly Tensor _alphasCumprod;
    private readonly float[] _alphasCumprodValues;
    private readonly float[] _trainSigmas; // ((1 − ᾱ) / ᾱ)^0.5 [T]
    private readonly float[] _lambdas;     // log α_t − log σ_t [T]
    private float[] _sigmas;               // the inference sigmas [n + 1] (last: 0 or sigma_min); [T] before SetTimesteps
    private long[] _timesteps;
    private readonly Tensor?[] _modelOutputs;
    private int _lowerOrderNums;

    public SchedulerConfig Config { get; }
    public Tensor Betas => _betas;
    /// <summary>ᾱ; with rescale_betas_zero_snr its last value is 2^−24 instead of 0, as in diffusers.</summary>
    public Tensor AlphasCumprod => _alphasCumprod;
    /// <summary>The float32 sigmas, [n + 1] after <see cref="SetTimesteps"/> (the training sigmas before). A copy.</summary>
    public float[] Sigmas => (float[])_sigmas.Clone();
    public long[] Timesteps => (long[])_timesteps.Clone();
    public int? NumInferenceSteps { get; private set; }
    /// <summary>The index into <see cref="Timesteps"/> of the next step; null until the first <see cref="Step"/>.</summary>
    public int? StepIndex { get; private set; }

    public DPMSolverMultistepScheduler(SchedulerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        const string name = nameof(DPMSolverMultistepScheduler);
        SchedulerValidation.RejectThresholding(config, name);
        SchedulerValidation.CheckPredictionType(config, name);
        SchedulerValidation.CheckSpacing(config, name);
        if (config.AlgorithmType != "dpmsolver++")
            throw new NotSupportedException($"{name}: algorithm_type '{config.AlgorithmType}' is not supported; only dpmsolver++ (DPM++ 2M) is implemented.");
        if (config.SolverOrder is not (1 or 2))
            throw new NotSupportedException($"{name}: solver_order {config.SolverOrder} is not supported; use 2 (DPM++ 2M) or 1.");
        if (config.SolverType is not ("midpoint" or "heun"))
            throw new NotSupportedException($"{name}: solver_type '{config.SolverType}' is not supported. Supported: midpoint, heun.");
        if (config.FinalSigmasType is not ("zero" or "sigma_min"))
            throw new NotSupportedException($"{name}: final_sigmas_type '{config.FinalSigmasType}' is not supported. Supported: zero, sigma_min.");
        foreach (var (flag, key) in new[]
                 {
                     (config.UseKarrasSigmas, "use_karras_sigmas"), (config.UseExponentialSigmas, "use_exponential_sigmas"),
                     (config.UseBetaSigmas, "use_beta_sigmas"), (config.UseLuLambdas, "use_lu_lambdas"),
                     (config.UseFlowSigmas, "use_flow_sigmas"), (config.UseDynamicShifting, "use_dynamic_shifting"),
                 })
        {
            if (flag)
                throw new NotSupportedException($"{name}: {key} = true is not supported; set it to false to use the schedule's own sigmas.");
        }
        Config = config;

        using var scope = torch.NewDisposeScope();
        _betas = NoiseSchedule.Betas(config).DetachFromDisposeScope();
        var alphasCumprod = NoiseSchedule.AlphasCumprod(_betas);
        // Zero terminal SNR would make σ infinite at the last training step: diffusers sets ᾱ to 2^−24 there.
        if (config.RescaleBetasZeroSnr)
            alphasCumprod[-1] = torch.tensor(MathF.Pow(2, -24));
        _alphasCumprod = alphasCumprod.DetachFromDisposeScope();
        // Element-wise float32 math in C#, IEEE-rounded like PyTorch's kernels (see NoiseSchedule).
        _alphasCumprodValues = _alphasCumprod.data<float>().ToArray();
        _lambdas = _alphasCumprodValues.Select(a => MathF.Log(MathF.Sqrt(a)) - MathF.Log(MathF.Sqrt(1f - a))).ToArray();
        _trainSigmas = _alphasCumprodValues.Select(a => MathF.Sqrt((1f - a) / a)).ToArray();
        // Before SetTimesteps diffusers holds the training sigmas and timesteps T−1 .. 0.
        _sigmas = (float[])_trainSigmas.Clone();
        _timesteps = DDPMScheduler.DefaultTimesteps(config.NumTrainTimesteps);
        _modelOutputs = new Tensor?[config.SolverOrder];
    }

    /// <summary>
    /// diffusers' DPM-Solver <c>set_timesteps</c>: n timesteps (spacing over the first <c>last_timestep</c> training
    /// steps, which lambda_min_clipped may shorten), and their sigmas plus a final 0 (or sigma_min). Resets the multistep state.
    /// </summary>
    public void SetTimesteps(int numInferenceSteps)
    {
        int trainSteps = Config.NumTrainTimesteps;
        SchedulerValidation.CheckStepCount(numInferenceSteps, trainSteps, nameof(DPMSolverMultistepScheduler));

        // 1. timesteps. clipped_idx = searchsorted(flip(λ), lambda_min_clipped): the count of λ below the bound.
        float bound = (float)Config.LambdaMinClipped;
        long clippedIndex = _lambdas.Count(l => l < bound);
        long lastTimestep = trainSteps - clippedIndex;
        long[] timesteps;
        switch (Config.TimestepSpacing)
        {
            case "linspace":
                // linspace(0, last − 1, n + 1).round()[::-1][:-1]
                timesteps = NoiseSchedule.NumpyRoundToInt64(NoiseSchedule.NumpyLinspace(0, lastTimestep - 1, numInferenceSteps + 1))
                    .Reverse().Take(numInferenceSteps).ToArray();
                break;
            case "leading":
                long stepRatio = lastTimestep / (numInferenceSteps + 1);
                timesteps = Enumerable.Range(0, numInferenceSteps + 1).Reverse().Take(numInferenceSteps)
                    .Select(i => i * stepRatio + Config.StepsOffset).ToArray();
                break;
            default: // trailing
                double ratio = (double)trainSteps / numInferenceSteps;
                timesteps = NoiseSchedule.NumpyRoundToInt64(NoiseSchedule.NumpyArange(lastTimestep, 0, -ratio)).Select(t => t - 1).ToArray();
                break;
        }
        foreach (long t in timesteps)
        {
            if (t < 0 || t >= trainSteps)
                throw new ArgumentException($"DPMSolverMultistepScheduler: {Config.TimestepSpacing} spacing with {numInferenceSteps} steps gives timestep {t}, outside [0, {trainSteps - 1}]. Choose another step count or spacing.");
        }

        // 2. sigmas: np.interp at integer timesteps returns the float32 training sigmas exactly; then the final sigma.
        float sigmaLast = Config.FinalSigmasType == "sigma_min"
            ? MathF.Sqrt((1f - _alphasCumprodValues[0]) / _alphasCumprodValues[0])
            : 0f;
        _sigmas = [.. timesteps.Select(t => _trainSigmas[t]), sigmaLast];
        _timesteps = timesteps;
        NumInferenceSteps = numInferenceSteps;
        Reset();
    }

    /// <summary>Forgets the previous model outputs and the step index, for a new trajectory on the same timesteps.</summary>
    public void Reset()
    {
        for (int i = 0; i < _modelOutputs.Length; i++)
        {
            _modelOutputs[i]?.Dispose();
            _modelOutputs[i] = null;
        }
        _lowerOrderNums = 0;
        StepIndex = null;
    }

    /// <summary>
    /// One multistep DPM-Solver++ step. <paramref name="varianceNoise"/> and <paramref name="generator"/> are unused
    /// (dpmsolver++ is deterministic). <see cref="SchedulerStepResult.PredOriginalSample"/> is the converted model output x0.
    /// </summary>
    public SchedulerStepResult Step(Tensor modelOutput, long timestep, Tensor sample, Tensor? varianceNoise = null, torch.Generator? generator = null)
    {
        if (NumInferenceSteps is null)
            throw new InvalidOperationException("DPMSolverMultistepScheduler: call SetTimesteps(numInferenceSteps) before Step.");
        StepIndex ??= IndexForTimestep(timestep);
        int stepIndex = StepIndex.Value;
        int count = _timesteps.Length;
        if (stepIndex >= count)
            throw new InvalidOperationException($"DPMSolverMultistepScheduler: all {count} steps are done. Call Reset() (or use CloneFresh()) to start a new trajectory.");

        using var scope = torch.NewDisposeScope();

        // 1. which order this step may use (diffusers' lower_order_second only concerns third order, not implemented)
        bool lowerOrderFinal = stepIndex == count - 1
                               && (Config.EulerAtFinal || (Config.LowerOrderFinal && count < 15) || Config.FinalSigmasType == "zero");

        // 2. model output -> x0 prediction, pushed into the history
        var x0Pred = ConvertModelOutput(modelOutput, sample, stepIndex);
        _modelOutputs[0]?.Dispose();
        for (int i = 0; i < _modelOutputs.Length - 1; i++) _modelOutputs[i] = _modelOutputs[i + 1];
        // The history outlives the caller's dispose scope: keep a handle of our own.
        _modelOutputs[^1] = x0Pred.alias().DetachFromDisposeScope();

        var sampleF32 = sample.dtype == ScalarType.Float32 ? sample : sample.to_type(ScalarType.Float32);

        // 3. update
        Tensor prevSample = Config.SolverOrder == 1 || _lowerOrderNums < 1 || lowerOrderFinal
            ? FirstOrderUpdate(x0Pred, sampleF32, stepIndex)
            : SecondOrderUpdate(_modelOutputs[^1]!, _modelOutputs[^2]!, sampleF32, stepIndex);

        if (_lowerOrderNums < Config.SolverOrder) _lowerOrderNums++;
        if (prevSample.dtype != modelOutput.dtype) prevSample = prevSample.to_type(modelOutput.dtype);
        StepIndex = stepIndex + 1;

        return new SchedulerStepResult(prevSample.MoveToOuterDisposeScope(), x0Pred.MoveToOuterDisposeScope());
    }

    /// <summary>diffusers' <c>index_for_timestep</c>: the position in <see cref="Timesteps"/>; the second one if it occurs twice; the last if absent.</summary>
    private int IndexForTimestep(long timestep)
    {
        var matches = Enumerable.Range(0, _timesteps.Length).Where(i => _timesteps[i] == timestep).Take(2).ToArray();
        return matches.Length switch
        {
            0 => _timesteps.Length - 1,
            1 => matches[0],
            _ => matches[1],
        };
    }

    /// <summary>α_t = 1 / sqrt(σ² + 1), σ_t = σ · α_t, from the VE-style sigma (float32, as diffusers' 0-d tensors).</summary>
    private static (float Alpha, float Sigma) AlphaSigma(float sigma)
    {
        float alpha = 1f / MathF.Sqrt(sigma * sigma + 1f);
        return (alpha, sigma * alpha);
    }

    /// <summary>λ = log α − log σ (+∞ at σ = 0).</summary>
    private static float Lambda(float alpha, float sigma) => MathF.Log(alpha) - MathF.Log(sigma);

    private Tensor ConvertModelOutput(Tensor modelOutput, Tensor sample, int stepIndex)
    {
        if (Config.PredictionType == "sample")
        {
            SchedulerValidation.CheckSameShape(modelOutput, sample, nameof(DPMSolverMultistepScheduler));
            return modelOutput.alias();
        }
        var (alphaT, sigmaT) = AlphaSigma(_sigmas[stepIndex]);
        if (Config.PredictionType == "epsilon")
        {
            // diffusers keeps model_output[:, :3] for learned-variance configs; this keeps the first C channels.
            if (Config.VarianceType is "learned" or "learned_range" && modelOutput.dim() == sample.dim() && modelOutput.shape[1] == 2 * sample.shape[1])
                modelOutput = modelOutput.narrow(1, 0, sample.shape[1]);
            SchedulerValidation.CheckSameShape(modelOutput, sample, nameof(DPMSolverMultistepScheduler));
            return (sample - modelOutput * sigmaT) / alphaT;
        }
        SchedulerValidation.CheckSameShape(modelOutput, sample, nameof(DPMSolverMultistepScheduler));
        return sample * alphaT - modelOutput * sigmaT; // v_prediction
    }

    /// <summary>DPM-Solver++ first order (DDIM in data prediction): x_t = σ_t/σ_s · x_s − α_t (e^{−h} − 1) · x0.</summary>
    private Tensor FirstOrderUpdate(Tensor x0, Tensor sample, int stepIndex)
    {
        var (alphaT, sigmaT) = AlphaSigma(_sigmas[stepIndex + 1]);
        var (alphaS, sigmaS) = AlphaSigma(_sigmas[stepIndex]);
        float h = Lambda(alphaT, sigmaT) - Lambda(alphaS, sigmaS);
        return sample * (sigmaT / sigmaS) - x0 * (alphaT * (MathF.Exp(-h) - 1f));
    }

    /// <summary>Multistep DPM-Solver++(2M) from the last two x0 predictions m0 (now) and m1 (previous step).</summary>
    private Tensor SecondOrderUpdate(Tensor m0, Tensor m1, Tensor sample, int stepIndex)
    {
        var (alphaT, sigmaT) = AlphaSigma(_sigmas[stepIndex + 1]);
        var (alphaS0, sigmaS0) = AlphaSigma(_sigmas[stepIndex]);
        var (alphaS1, sigmaS1) = AlphaSigma(_sigmas[stepIndex - 1]);
        float lambdaT = Lambda(alphaT, sigmaT), lambdaS0 = Lambda(alphaS0, sigmaS0), lambdaS1 = Lambda(alphaS1, sigmaS1);

        float h = lambdaT - lambdaS0;
        float h0 = lambdaS0 - lambdaS1;
        float r0 = h0 / h;
        var d0 = m0;
        var d1 = (m0 - m1) * (1f / r0);
        float expMinusHMinusOne = MathF.Exp(-h) - 1f;
        if (Config.SolverType == "midpoint")
        {
            return sample * (sigmaT / sigmaS0)
                   - d0 * (alphaT * expMinusHMinusOne)
                   - d1 * (0.5f * (alphaT * expMinusHMinusOne));
        }
        // heun
        return sample * (sigmaT / sigmaS0)
               - d0 * (alphaT * expMinusHMinusOne)
               + d1 * (alphaT * (expMinusHMinusOne / h + 1f));
    }

    /// <summary>
    /// diffusers' DPM-Solver <c>add_noise</c>: α·x0 + σ·noise with the sigma of each timestep's position in
    /// <see cref="Timesteps"/> (before <see cref="SetTimesteps"/>: the training schedule). Unlike diffusers, a
    /// timestep that is not in the schedule is an error rather than silently the last sigma (0: no noise at all).
    /// </summary>
    public Tensor AddNoise(Tensor original, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var requested = timesteps.to_type(ScalarType.Int64).cpu().flatten().data<long>().ToArray();
        var indices = requested.Select(t =>
        {
            if (Array.IndexOf(_timesteps, t) < 0)
                throw new ArgumentException($"DPMSolverMultistepScheduler.AddNoise: timestep {t} is not in the current schedule ({_timesteps.Length} timesteps). For training noise use DDPM/DDIM's AddNoise, which takes any timestep.", nameof(timesteps));
            return (long)IndexForTimestep(t);
        }).ToArray();
        var shape = new long[Math.Max(1, (int)original.dim())];
        Array.Fill(shape, 1L);
        shape[0] = indices.Length;
        var pairs = indices.Select(i => AlphaSigma(_sigmas[i])).ToArray();
        var alphaT = torch.tensor(pairs.Select(p => p.Alpha).ToArray()).reshape(shape).to(original.dtype, original.device);
        var sigmaT = torch.tensor(pairs.Select(p => p.Sigma).ToArray()).reshape(shape).to(original.dtype, original.device);
        return (alphaT * original + sigmaT * noise).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The v-prediction target from the training ᾱ (diffusers' DPM-Solver has no get_velocity; this is DDPM's,
    /// which is what a v-prediction model was trained against).
    /// </summary>
    public Tensor GetVelocity(Tensor sample, Tensor noise, Tensor timesteps) =>
        NoiseSchedule.GetVelocity(_alphasCumprod, sample, noise, timesteps);

    public IDiffusionScheduler CloneFresh()
    {
        var clone = new DPMSolverMultistepScheduler(Config);
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
