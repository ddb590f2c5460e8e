using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>
/// The training noise schedule every scheduler here shares — diffusers carries the same code in each scheduler file
/// ("Copied from scheduling_ddpm") — and the few numpy routines their <c>set_timesteps</c> rely on, reproduced to the bit.
/// Arithmetic happens in the precision diffusers uses: float64 where it is Python/numpy, float32 where it is torch.
/// <para>
/// Scalar coefficients (diffusers' 0-d float32 tensors such as <c>alpha_prod_t ** 0.5</c>) are computed in C# float
/// arithmetic, in diffusers' order of operations: + − × ÷ and sqrt are IEEE-rounded there exactly as in PyTorch's CPU
/// kernels, and log/exp go to the same C library. (The libtorch build we ship rounds sqrt, log and exp differently
/// from PyTorch's for some inputs, so doing this math in torch ops would cost bit-exactness.) Tensors are then only
/// scaled, added and divided by those floats, which is bit-identical to PyTorch and stays differentiable.
/// </para>
/// </summary>
public static class NoiseSchedule
{
    public static readonly string[] SupportedBetaSchedules = ["linear", "scaled_linear", "squaredcos_cap_v2"];

    /// <summary>float32 [num_train_timesteps], as diffusers' constructors compute <c>self.betas</c>.</summary>
    public static Tensor Betas(SchedulerConfig config)
    {
        int count = config.NumTrainTimesteps;
        if (count < 1)
            throw new ArgumentException($"num_train_timesteps is {count}; it must be at least 1.");
        Tensor betas;
        if (config.TrainedBetas is { } trained)
        {
            if (trained.Length != count)
                throw new ArgumentException($"trained_betas has {trained.Length} values but num_train_timesteps is {count}; they must agree.");
            // torch.tensor(list_of_floats, dtype=float32): each float64 rounded to nearest float32.
            betas = torch.tensor(trained.Select(b => (float)b).ToArray());
        }
        else
        {
            betas = config.BetaSchedule switch
            {
                // torch.linspace(beta_start, beta_end, n, dtype=float32)
                "linear" => torch.linspace(config.BetaStart, config.BetaEnd, count, dtype: ScalarType.Float32),
                // torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=float32) ** 2 (the square roots in Python float64)
                "scaled_linear" => torch.linspace(Math.Pow(config.BetaStart, 0.5), Math.Pow(config.BetaEnd, 0.5), count, dtype: ScalarType.Float32).pow(2),
                "squaredcos_cap_v2" => torch.tensor(CosineBetas(count)),
                _ => throw new NotSupportedException(
                    $"beta_schedule '{config.BetaSchedule}' is not supported. Supported: {string.Join(", ", SupportedBetaSchedules)}, or trained_betas."),
            };
        }
        if (config.RescaleBetasZeroSnr)
        {
            using (betas) return RescaleZeroTerminalSnr(betas);
        }
        return betas;
    }

    /// <summary>
    /// diffusers' <c>betas_for_alpha_bar</c> with the cosine alpha_bar of improved DDPM and max_beta 0.999,
    /// in Python float64, then rounded to float32.
    /// </summary>
    public static float[] CosineBetas(int count, double maxBeta = 0.999)
    {
        static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        var betas = new float[count];
        for (int i = 0; i < count; i++)
        {
            double t1 = (double)i / count;
            double t2 = (double)(i + 1) / count;
            betas[i] = (float)Math.Min(1 - AlphaBar(t2) / AlphaBar(t1), maxBeta);
        }
        return betas;
    }

    /// <summary>
    /// Rescale betas to zero terminal SNR (Lin et al. 2023, Algorithm 1) in diffusers' float32 order of operations.
    /// The element-wise steps run in C# float arithmetic, which is IEEE like PyTorch's CPU kernels for
    /// + − × ÷ and sqrt (the sqrt of the libtorch build we ship is off by an ulp for some inputs).
    /// </summary>
    public static Tensor RescaleZeroTerminalSnr(Tensor betas)
    {
        float[] alphasCumprod;
        using (var alphas = 1.0 - betas)
        using (var cumprod = alphas.cumprod(0)) // ATen accumulates in double: keep torch's own
            alphasCumprod = cumprod.data<float>().ToArray();
        int n = alphasCumprod.Length;
        var alphasBarSqrt = alphasCumprod.Select(MathF.Sqrt).ToArray();
        float first = alphasBarSqrt[0], last = alphasBarSqrt[n - 1];
        // Shift so the last timestep is zero, then scale so the first is back to its old value.
        float scale = first / (first - last);
        var alphasBar = new float[n];
        for (int i = 0; i < n; i++)
        {
            float shifted = (alphasBarSqrt[i] - last) * scale;
            alphasBar[i] = shifted * shifted;
        }
        var rescaled = new float[n];
        rescaled[0] = 1f - alphasBar[0];
        for (int i = 1; i < n; i++) rescaled[i] = 1f - alphasBar[i] / alphasBar[i - 1];
        return torch.tensor(rescaled);
    }

    /// <summary>
    /// The DDPM/DDIM <c>set_timesteps</c> spacing (both schedulers compute it the same way), descending:
    /// leading <c>i · (T / n) + steps_offset</c>; trailing <c>round(arange(T, 0, −T/n)) − 1</c> (numpy may
    /// yield n + 1 values, kept as diffusers does); linspace <c>round(linspace(0, T − 1, n))</c>.
    /// steps_offset applies to leading only.
    /// </summary>
    public static long[] SpacedTimesteps(SchedulerConfig config, int numInferenceSteps)
    {
        int trainSteps = config.NumTrainTimesteps;
        switch (config.TimestepSpacing)
        {
            case "linspace":
                return NumpyRoundToInt64(NumpyLinspace(0, trainSteps - 1, numInferenceSteps)).Reverse().ToArray();
            case "leading":
                long stepRatio = trainSteps / numInferenceSteps;
                return Enumerable.Range(0, numInferenceSteps).Reverse().Select(i => i * stepRatio + config.StepsOffset).ToArray();
            default: // trailing
                double ratio = (double)trainSteps / numInferenceSteps;
                return NumpyRoundToInt64(NumpyArange(trainSteps, 0, -ratio)).Select(t => t - 1).ToArray();
        }
    }

    /// <summary>
    /// The Euler schedulers' <c>set_timesteps</c> spacing, descending and in float32 as diffusers keeps it: leading and
    /// trailing are DDIM's integers (<see cref="SpacedTimesteps"/>), but linspace is NOT rounded —
    /// <c>np.linspace(0, T − 1, n)</c> cast to float32, so 50 steps give 999, 978.6122, 958.2245, ...
    /// </summary>
    public static float[] SigmaTimesteps(SchedulerConfig config, int numInferenceSteps) =>
        config.TimestepSpacing == "linspace"
            ? NumpyLinspace(0, config.NumTrainTimesteps - 1, numInferenceSteps).Reverse().Select(t => (float)t).ToArray()
            : SpacedTimesteps(config, numInferenceSteps).Select(t => (float)t).ToArray();

    /// <summary>
    /// The training sigmas σ_t = sqrt((1 − ᾱ_t) / ᾱ_t) in float32 (diffusers' <c>((1 - acp) / acp) ** 0.5</c>), the
    /// noise scale of the variance-exploding view x_t / sqrt(ᾱ_t) = x0 + σ_t·ε the Euler and DPM-Solver schedulers use.
    /// </summary>
    public static float[] TrainSigmas(float[] alphasCumprod) =>
        alphasCumprod.Select(a => MathF.Sqrt((1f - a) / a)).ToArray();

    /// <summary><c>torch.cumprod(1.0 - betas, dim=0)</c>, float32.</summary>
    public static Tensor AlphasCumprod(Tensor betas)
    {
        using var alphas = 1.0 - betas;
        return alphas.cumprod(0);
    }

    /// <summary>
    /// q(x_t | x_0) = sqrt(acp[t])·x0 + sqrt(1 − acp[t])·noise, as DDPM/DDIM <c>add_noise</c>: the coefficients are
    /// taken in the sample's dtype and broadcast over every dimension after the batch. Differentiable in x0 and noise.
    /// </summary>
    public static Tensor AddNoise(Tensor alphasCumprod, Tensor original, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var (sqrtAlphaProd, sqrtOneMinusAlphaProd) = Coefficients(alphasCumprod, original, timesteps);
        return (sqrtAlphaProd * original + sqrtOneMinusAlphaProd * noise).MoveToOuterDisposeScope();
    }

    /// <summary>v = sqrt(acp[t])·noise − sqrt(1 − acp[t])·sample, as DDPM/DDIM <c>get_velocity</c>.</summary>
    public static Tensor GetVelocity(Tensor alphasCumprod, Tensor sample, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var (sqrtAlphaProd, sqrtOneMinusAlphaProd) = Coefficients(alphasCumprod, sample, timesteps);
        return (sqrtAlphaProd * noise - sqrtOneMinusAlphaProd * sample).MoveToOuterDisposeScope();
    }

    /// <summary>sqrt(acp[t]) and sqrt(1 − acp[t]) per batch element, shaped [B, 1, ...] to broadcast over <paramref name="like"/>.</summary>
    private static (Tensor SqrtAlphaProd, Tensor SqrtOneMinusAlphaProd) Coefficients(Tensor alphasCumprod, Tensor like, Tensor timesteps)
    {
        if (timesteps.dtype is not (ScalarType.Int64 or ScalarType.Int32 or ScalarType.Int16 or ScalarType.Int8 or ScalarType.Byte))
            throw new ArgumentException($"timesteps must be an integer tensor (got {timesteps.dtype}).", nameof(timesteps));
        long count = alphasCumprod.shape[0];
        var index = timesteps.to_type(ScalarType.Int64).cpu().flatten().data<long>().ToArray();
        foreach (long t in index)
        {
            if (t < 0 || t >= count)
                throw new ArgumentOutOfRangeException(nameof(timesteps), $"timesteps must lie in [0, {count - 1}]; got {t}.");
        }
        var shape = new long[Math.Max(1, (int)like.dim())];
        Array.Fill(shape, 1L);
        shape[0] = index.Length;

        Tensor sqrtAlphaProd, sqrtOneMinusAlphaProd;
        var values = alphasCumprod.data<float>();
        if (like.dtype == ScalarType.Float32)
        {
            // (acp ** 0.5, (1 - acp) ** 0.5) in float32, IEEE-rounded as PyTorch computes them.
            sqrtAlphaProd = torch.tensor(index.Select(t => MathF.Sqrt(values[t])).ToArray());
            sqrtOneMinusAlphaProd = torch.tensor(index.Select(t => MathF.Sqrt(1f - values[t])).ToArray());
        }
        else if (like.dtype == ScalarType.Float64)
        {
            sqrtAlphaProd = torch.tensor(index.Select(t => Math.Sqrt(values[t])).ToArray());
            sqrtOneMinusAlphaProd = torch.tensor(index.Select(t => Math.Sqrt(1.0 - values[t])).ToArray());
        }
        else
        {
            var alphas = alphasCumprod.to_type(like.dtype).index_select(0, torch.tensor(index));
            sqrtAlphaProd = alphas.pow(0.5);
            sqrtOneMinusAlphaProd = (1 - alphas).pow(0.5);
        }
        return (sqrtAlphaProd.reshape(shape).to(like.dtype, like.device), sqrtOneMinusAlphaProd.reshape(shape).to(like.dtype, like.device));
    }

    // ---- numpy, to the bit ------------------------------------------------------------------------------------

    /// <summary>
    /// <c>np.linspace(start, stop, num)</c> (endpoint=True, float64): <c>i * step + start</c> with
    /// <c>step = (stop - start) / (num - 1)</c>, and the last value set to <c>stop</c> exactly.
    /// </summary>
    public static double[] NumpyLinspace(double start, double stop, int num)
    {
        if (num < 0) throw new ArgumentOutOfRangeException(nameof(num), $"Number of samples, {num}, must be non-negative.");
        var y = new double[num];
        if (num == 0) return y;
        int div = num - 1;
        if (div == 0)
        {
            y[0] = start;
            return y;
        }
        double delta = stop - start;
        double step = delta / div;
        for (int i = 0; i < num; i++)
            y[i] = step == 0 ? i / (double)div * delta + start : i * step + start;
        y[num - 1] = stop;
        return y;
    }

    /// <summary>
    /// <c>np.arange(start, stop, step)</c> in float64: length <c>ceil((stop - start) / step)</c>, values
    /// <c>start + i * ((start + step) - start)</c> — numpy fills from the first two elements, so the stride is the
    /// rounded difference, not <paramref name="step"/> itself.
    /// </summary>
    public static double[] NumpyArange(double start, double stop, double step)
    {
        if (step == 0) throw new ArgumentException("Maximum allowed size exceeded (step is zero).", nameof(step));
        double length = Math.Ceiling((stop - start) / step);
        if (double.IsNaN(length)) throw new ArgumentException("arange: cannot compute length");
        if (length <= 0) return [];
        var y = new double[(long)length];
        y[0] = start;
        if (y.Length == 1) return y;
        y[1] = start + step;
        double delta = y[1] - y[0];
        for (int i = 2; i < y.Length; i++) y[i] = start + i * delta;
        return y;
    }

    /// <summary>
    /// <c>np.interp(x, arange(len(fp)), fp)</c> in float64: on the segment [j, j + 1] holding x,
    /// <c>(fp[j+1] − fp[j]) · (x − j) + fp[j]</c>; fp[0] left of the range, fp[^1] at and right of its end.
    /// </summary>
    public static double NumpyInterpAtIndex(double x, float[] fp)
    {
        if (fp.Length == 0) throw new ArgumentException("np.interp needs at least one point.", nameof(fp));
        if (double.IsNaN(x)) return double.NaN;
        int last = fp.Length - 1;
        if (x <= 0) return fp[0];
        if (x >= last) return fp[last];
        int j = (int)Math.Floor(x);
        double slope = (double)fp[j + 1] - fp[j]; // divided by xp[j + 1] − xp[j] = 1
        return slope * (x - j) + fp[j];
    }

    /// <summary><c>np.round(x).astype(np.int64)</c>: round half to even, then truncate.</summary>
    public static long[] NumpyRoundToInt64(IEnumerable<double> values) =>
        values.Select(v => (long)Math.Round(v, MidpointRounding.ToEven)).ToArray();
}
