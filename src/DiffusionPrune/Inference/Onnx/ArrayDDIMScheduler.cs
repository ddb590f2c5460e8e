// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL and Microsoft.ML.OnnxRuntime here.
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace DiffusionPrune.Inference.Onnx;

/// <summary>
/// The keys of a diffusers scheduler_config.json that DDIM reads, with DDIMScheduler's defaults. A DDPM or DPM-Solver
/// file gives its betas and spacing the same way (diffusers' <c>DDIMScheduler.from_config(other.config)</c>).
/// </summary>
public sealed record ArrayDDIMConfig
{
    public int NumTrainTimesteps { get; init; } = 1000;
    public double BetaStart { get; init; } = 0.0001;
    public double BetaEnd { get; init; } = 0.02;
    /// <summary>linear | scaled_linear | squaredcos_cap_v2.</summary>
    public string BetaSchedule { get; init; } = "linear";
    public double[]? TrainedBetas { get; init; }
    public bool RescaleBetasZeroSnr { get; init; }
    /// <summary>epsilon | v_prediction | sample.</summary>
    public string PredictionType { get; init; } = "epsilon";
    public bool ClipSample { get; init; } = true;
    public double ClipSampleRange { get; init; } = 1.0;
    /// <summary>leading | trailing | linspace.</summary>
    public string TimestepSpacing { get; init; } = "leading";
    public int StepsOffset { get; init; }
    public bool SetAlphaToOne { get; init; } = true;
}

/// <summary>
/// diffusers' DDIMScheduler on float arrays, for runtimes without TorchSharp (samples/OnDeviceDemo). Its twin is
/// Schedulers/DDIMScheduler.cs: the same float32 arithmetic in the same order, checked against it to 1e-5 by
/// ArrayDDIMSchedulerTests. Like diffusers, the previous timestep is <c>t − num_train_timesteps / n</c>.
/// </summary>
public sealed class ArrayDDIMScheduler
{
    private readonly float[] _alphasCumprod;
    private readonly float _finalAlphaCumprod;
    private long[] _timesteps = [];

    public ArrayDDIMConfig Config { get; }

    /// <summary>Weight of the noise in each step; 0 = deterministic DDIM.</summary>
    public double Eta { get; }

    /// <summary>ᾱ_t, float32 [num_train_timesteps]. A copy.</summary>
    public float[] AlphasCumprod => (float[])_alphasCumprod.Clone();

    /// <summary>The inference timesteps, descending, after <see cref="SetTimesteps"/>. A copy.</summary>
    public long[] Timesteps => (long[])_timesteps.Clone();

    public int? NumInferenceSteps { get; private set; }

    public ArrayDDIMScheduler(ArrayDDIMConfig config, double eta = 0.0)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.NumTrainTimesteps < 1)
            throw new ArgumentException($"num_train_timesteps is {config.NumTrainTimesteps}; it must be at least 1.");
        if (config.PredictionType is not ("epsilon" or "v_prediction" or "sample"))
            throw new NotSupportedException($"DDIM: prediction_type '{config.PredictionType}' is not supported. Supported: epsilon, v_prediction, sample.");
        if (config.TimestepSpacing is not ("leading" or "trailing" or "linspace"))
            throw new NotSupportedException($"DDIM: timestep_spacing '{config.TimestepSpacing}' is not supported. Supported: leading, trailing, linspace.");
        if (!(eta >= 0) || double.IsInfinity(eta))
            throw new ArgumentOutOfRangeException(nameof(eta), $"DDIM: eta must be a finite number >= 0 (got {eta}).");
        Config = config;
        Eta = eta;
        _alphasCumprod = Cumprod(Betas(config));
        // At the last step there is no previous ᾱ: 1 (set_alpha_to_one) or ᾱ_0.
        _finalAlphaCumprod = config.SetAlphaToOne ? 1f : _alphasCumprod[0];
    }

    public static ArrayDDIMScheduler FromFile(string path, double eta = 0.0)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"No scheduler config at '{path}'. An exported bundle has scheduler_config.json beside model.onnx.", path);
        return new ArrayDDIMScheduler(ParseConfig(File.ReadAllText(path), path), eta);
    }

    /// <summary>Reads the DDIM keys of a scheduler_config.json; absent keys keep DDIMScheduler's defaults.</summary>
    public static ArrayDDIMConfig ParseConfig(string json, string source = "scheduler_config.json")
    {
        JsonObject root;
        try
        {
            // Python's json writes bare -Infinity/NaN (DPM-Solver's lambda_min_clipped); DDIM reads none of those keys.
            json = Regex.Replace(json, @"(?<=[:\[,]\s*)-?(Infinity|NaN)(?=\s*[,\]}])", "null");
            root = JsonNode.Parse(json) as JsonObject ?? throw Formats.Messages.InvalidData($"{source} must hold a JSON object.");
        }
        catch (JsonException e)
        {
            throw Formats.Messages.InvalidData($"{source} is not valid JSON ({Formats.Messages.OneLine(e.Message)}).", e);
        }
        if (Flag(root, "thresholding", source, false))
            throw new NotSupportedException($"{source}: thresholding is not supported. Set \"thresholding\": false.");
        var d = new ArrayDDIMConfig();
        return new ArrayDDIMConfig
        {
            NumTrainTimesteps = Value(root, "num_train_timesteps", source, n => checked((int)n.GetValue<double>()), d.NumTrainTimesteps),
            BetaStart = Value(root, "beta_start", source, n => n.GetValue<double>(), d.BetaStart),
            BetaEnd = Value(root, "beta_end", source, n => n.GetValue<double>(), d.BetaEnd),
            BetaSchedule = Value(root, "beta_schedule", source, n => n.GetValue<string>(), d.BetaSchedule),
            TrainedBetas = Value<double[]?>(root, "trained_betas", source, n => n.AsArray().Select(b => b!.GetValue<double>()).ToArray(), null),
            RescaleBetasZeroSnr = Flag(root, "rescale_betas_zero_snr", source, d.RescaleBetasZeroSnr),
            PredictionType = Value(root, "prediction_type", source, n => n.GetValue<string>(), d.PredictionType),
            ClipSample = Flag(root, "clip_sample", source, d.ClipSample),
            ClipSampleRange = Value(root, "clip_sample_range", source, n => n.GetValue<double>(), d.ClipSampleRange),
            TimestepSpacing = Value(root, "timestep_spacing", source, n => n.GetValue<string>(), d.TimestepSpacing),
            StepsOffset = Value(root, "steps_offset", source, n => checked((int)n.GetValue<double>()), d.StepsOffset),
            SetAlphaToOne = Flag(root, "set_alpha_to_one", source, d.SetAlphaToOne),
        };
    }

    /// <summary>diffusers' DDIM <c>set_timesteps</c> (leading, trailing or linspace spacing), descending.</summary>
    public void SetTimesteps(int numInferenceSteps)
    {
        int trainSteps = Config.NumTrainTimesteps;
        if (numInferenceSteps < 1 || numInferenceSteps > trainSteps)
            throw new ArgumentOutOfRangeException(nameof(numInferenceSteps), $"DDIM: the number of inference steps must be between 1 and num_train_timesteps ({trainSteps}); got {numInferenceSteps}.");
        _timesteps = Config.TimestepSpacing switch
        {
            "linspace" => NumpyLinspace(0, trainSteps - 1, numInferenceSteps).Select(RoundHalfEven).Reverse().ToArray(),
            "leading" => Enumerable.Range(0, numInferenceSteps).Reverse().Select(i => (long)i * (trainSteps / numInferenceSteps) + Config.StepsOffset).ToArray(),
            _ => NumpyArange(trainSteps, 0, -(double)trainSteps / numInferenceSteps).Select(t => RoundHalfEven(t) - 1).ToArray(),
        };
        NumInferenceSteps = numInferenceSteps;
    }

    /// <summary>
    /// One DDIM step x_t -> x_{t−1} (formula (12) of the DDIM paper). <paramref name="varianceNoise"/> (standard normal,
    /// the sample's size) is needed when eta > 0.
    /// </summary>
    public float[] Step(float[] modelOutput, long timestep, float[] sample, float[]? varianceNoise = null)
    {
        int steps = NumInferenceSteps ?? throw new InvalidOperationException("DDIM: call SetTimesteps(numInferenceSteps) before Step; the step size depends on it.");
        if (timestep < 0 || timestep >= _alphasCumprod.Length)
            throw new ArgumentOutOfRangeException(nameof(timestep), $"DDIM: timestep {timestep} is outside [0, {_alphasCumprod.Length - 1}].");
        if (modelOutput.Length != sample.Length)
            throw new ArgumentException($"DDIM: the model output has {modelOutput.Length} values but the sample has {sample.Length}.");
        if (Eta > 0 && (varianceNoise is null || varianceNoise.Length != sample.Length))
            throw new ArgumentException("DDIM: eta > 0 needs variance noise the size of the sample.", nameof(varianceNoise));
        long prevTimestep = timestep - Config.NumTrainTimesteps / steps;

        // 1. ᾱ_t and ᾱ_{t−1}
        float alphaProdT = _alphasCumprod[timestep];
        float alphaProdTPrev = prevTimestep >= 0 ? _alphasCumprod[prevTimestep] : _finalAlphaCumprod;
        float betaProdT = 1f - alphaProdT;
        float sqrtAlphaProdT = MathF.Sqrt(alphaProdT), sqrtBetaProdT = MathF.Sqrt(betaProdT);

        // 4. σ_t(η) = η · sqrt((1 − ᾱ_{t−1}) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_{t−1}))  (formula (16))
        float betaProdTPrev = 1f - alphaProdTPrev;
        float variance = betaProdTPrev / betaProdT * (1f - alphaProdT / alphaProdTPrev);
        float stdDevT = (float)Eta * MathF.Sqrt(variance);
        float directionScale = MathF.Sqrt(1f - alphaProdTPrev - stdDevT * stdDevT);
        float sampleScale = MathF.Sqrt(alphaProdTPrev);
        float clip = (float)Config.ClipSampleRange;

        var prevSample = new float[sample.Length];
        for (int i = 0; i < sample.Length; i++)
        {
            float x = sample[i], output = modelOutput[i];
            // 2. predicted x0 and ε
            float predOriginal, predEpsilon;
            switch (Config.PredictionType)
            {
                case "epsilon":
                    predOriginal = (x - output * sqrtBetaProdT) / sqrtAlphaProdT;
                    predEpsilon = output;
                    break;
                case "sample":
                    predOriginal = output;
                    predEpsilon = (x - predOriginal * sqrtAlphaProdT) / sqrtBetaProdT;
                    break;
                default: // v_prediction
                    predOriginal = x * sqrtAlphaProdT - output * sqrtBetaProdT;
                    predEpsilon = output * sqrtAlphaProdT + x * sqrtBetaProdT;
                    break;
            }
            // 3. clip x0
            if (Config.ClipSample) predOriginal = Math.Clamp(predOriginal, -clip, clip);
            // 5. direction pointing to x_t, then x_{t−1}; 6. noise
            float prev = predOriginal * sampleScale + predEpsilon * directionScale;
            if (Eta > 0) prev += varianceNoise![i] * stdDevT;
            prevSample[i] = prev;
        }
        return prevSample;
    }

    // ---- the training noise schedule (twin: Schedulers/NoiseSchedule.cs) -------------------------------------

    /// <summary>float32 betas as diffusers' constructors compute them.</summary>
    private static float[] Betas(ArrayDDIMConfig config)
    {
        int count = config.NumTrainTimesteps;
        float[] betas;
        if (config.TrainedBetas is { } trained)
        {
            if (trained.Length != count)
                throw new ArgumentException($"trained_betas has {trained.Length} values but num_train_timesteps is {count}; they must agree.");
            betas = trained.Select(b => (float)b).ToArray();
        }
        else
        {
            betas = config.BetaSchedule switch
            {
                "linear" => TorchLinspace((float)config.BetaStart, (float)config.BetaEnd, count),
                "scaled_linear" => TorchLinspace((float)Math.Sqrt(config.BetaStart), (float)Math.Sqrt(config.BetaEnd), count).Select(b => b * b).ToArray(),
                "squaredcos_cap_v2" => CosineBetas(count),
                _ => throw new NotSupportedException($"beta_schedule '{config.BetaSchedule}' is not supported. Supported: linear, scaled_linear, squaredcos_cap_v2, or trained_betas."),
            };
        }
        return config.RescaleBetasZeroSnr ? RescaleZeroTerminalSnr(betas) : betas;
    }

    /// <summary><c>torch.linspace(start, end, n, dtype=float32)</c>: from the start up to halfway, from the end after.</summary>
    private static float[] TorchLinspace(float start, float end, int count)
    {
        var values = new float[count];
        if (count == 1)
        {
            values[0] = start;
            return values;
        }
        float step = (end - start) / (count - 1);
        int halfway = count / 2;
        for (int i = 0; i < count; i++)
            values[i] = i < halfway ? start + step * i : end - step * (count - i - 1);
        return values;
    }

    /// <summary>Improved DDPM's cosine alpha_bar with max_beta 0.999, in float64, then rounded to float32.</summary>
    private static float[] CosineBetas(int count)
    {
        static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        var betas = new float[count];
        for (int i = 0; i < count; i++)
            betas[i] = (float)Math.Min(1 - AlphaBar((double)(i + 1) / count) / AlphaBar((double)i / count), 0.999);
        return betas;
    }

    /// <summary>Zero terminal SNR (Lin et al. 2023, Algorithm 1) in float32.</summary>
    private static float[] RescaleZeroTerminalSnr(float[] betas)
    {
        var alphasBarSqrt = Cumprod(betas).Select(MathF.Sqrt).ToArray();
        int n = alphasBarSqrt.Length;
        float first = alphasBarSqrt[0], last = alphasBarSqrt[n - 1];
        float scale = first / (first - last);
        var alphasBar = alphasBarSqrt.Select(a => (a - last) * scale).Select(a => a * a).ToArray();
        var rescaled = new float[n];
        rescaled[0] = 1f - alphasBar[0];
        for (int i = 1; i < n; i++) rescaled[i] = 1f - alphasBar[i] / alphasBar[i - 1];
        return rescaled;
    }

    /// <summary><c>torch.cumprod(1.0 - betas, 0)</c>: the product accumulates in float64, each entry rounded to float32.</summary>
    private static float[] Cumprod(float[] betas)
    {
        var result = new float[betas.Length];
        double product = 1.0;
        for (int i = 0; i < betas.Length; i++)
        {
            product *= 1f - betas[i];
            result[i] = (float)product;
        }
        return result;
    }

    /// <summary><c>np.linspace(start, stop, num)</c> in float64 (the last value is <c>stop</c> exactly).</summary>
    private static double[] NumpyLinspace(double start, double stop, int num)
    {
        var y = new double[num];
        if (num == 1)
        {
            y[0] = start;
            return y;
        }
        double step = (stop - start) / (num - 1);
        for (int i = 0; i < num; i++) y[i] = step == 0 ? i / (double)(num - 1) * (stop - start) + start : i * step + start;
        y[num - 1] = stop;
        return y;
    }

    /// <summary><c>np.arange(start, stop, step)</c> in float64 (numpy's stride is the rounded difference of the first two values).</summary>
    private static double[] NumpyArange(double start, double stop, double step)
    {
        double length = Math.Ceiling((stop - start) / step);
        if (!(length > 0)) return [];
        var y = new double[(long)length];
        y[0] = start;
        if (y.Length == 1) return y;
        y[1] = start + step;
        double delta = y[1] - y[0];
        for (int i = 2; i < y.Length; i++) y[i] = start + i * delta;
        return y;
    }

    private static long RoundHalfEven(double value) => (long)Math.Round(value, MidpointRounding.ToEven);

    /// <summary>The key's value; an absent or null key keeps <paramref name="whenAbsent"/>.</summary>
    private static T Value<T>(JsonObject root, string key, string source, Func<JsonNode, T> read, T whenAbsent)
    {
        if (!root.TryGetPropertyValue(key, out var node) || node is null) return whenAbsent;
        try
        {
            return read(node);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or OverflowException or NullReferenceException)
        {
            throw Formats.Messages.InvalidData($"{source}: \"{key}\" has the wrong type ({node.ToJsonString()}).");
        }
    }

    /// <summary>A boolean key: absent keeps <paramref name="whenAbsent"/>, null is false (Python's None is falsy).</summary>
    private static bool Flag(JsonObject root, string key, string source, bool whenAbsent) =>
        root.TryGetPropertyValue(key, out var node) ? node is not null && Value(root, key, source, n => n.GetValue<bool>(), false) : whenAbsent;
}
