using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace DiffusionPrune.Schedulers;

/// <summary>A scheduler_config.json that cannot be read; the message says which file, which key and what to do.</summary>
public sealed class SchedulerConfigException(string message, Exception? inner = null) : Exception(Formats.Messages.OneLine(message), inner);

/// <summary>
/// diffusers' <c>scheduler_config.json</c>: the constructor arguments of DDPMScheduler, DDIMScheduler,
/// DPMSolverMultistepScheduler, PNDMScheduler, EulerDiscreteScheduler and EulerAncestralDiscreteScheduler under their
/// diffusers names. Keys a class does not take are simply unused by it
/// (diffusers ignores them too); unknown keys are ignored. A key absent from the file takes the default of the
/// class named in <c>_class_name</c> (<see cref="Defaults"/>), as diffusers' <c>from_config</c> does.
/// <para>
/// null in the file means what it means to diffusers, where it reaches the constructor as <c>None</c>:
/// for a flag it is false (<c>clip_sample: null</c> disables clipping), for <c>trained_betas</c> and
/// <c>variance_type</c> it is "not set". For a number or a string that diffusers would only trip over later
/// (<c>timestep_spacing: null</c> fails in <c>set_timesteps</c>) parsing fails at once, naming the key.
/// </para>
/// </summary>
public sealed record SchedulerConfig
{
    public const string DDPMClassName = "DDPMScheduler";
    public const string DDIMClassName = "DDIMScheduler";
    public const string DPMSolverMultistepClassName = "DPMSolverMultistepScheduler";
    public const string PNDMClassName = "PNDMScheduler";
    public const string EulerDiscreteClassName = "EulerDiscreteScheduler";
    public const string EulerAncestralDiscreteClassName = "EulerAncestralDiscreteScheduler";

    /// <summary>The diffusers class the file was written for; null when the file does not say.</summary>
    [JsonPropertyName("_class_name")] public string? ClassName { get; init; }

    // Noise schedule, shared by every class.
    [JsonPropertyName("num_train_timesteps")] public int NumTrainTimesteps { get; init; } = 1000;
    [JsonPropertyName("beta_start")] public double BetaStart { get; init; } = 0.0001;
    [JsonPropertyName("beta_end")] public double BetaEnd { get; init; } = 0.02;
    /// <summary>linear | scaled_linear | squaredcos_cap_v2. Ignored when <see cref="TrainedBetas"/> is set.</summary>
    [JsonPropertyName("beta_schedule")] public string BetaSchedule { get; init; } = "linear";
    [JsonPropertyName("trained_betas")] public double[]? TrainedBetas { get; init; }
    [JsonPropertyName("rescale_betas_zero_snr")] public bool RescaleBetasZeroSnr { get; init; }

    // Model output and clipping.
    /// <summary>epsilon | v_prediction | sample.</summary>
    [JsonPropertyName("prediction_type")] public string PredictionType { get; init; } = "epsilon";
    /// <summary>DDPM and DDIM: clamp the predicted x0 to ±<see cref="ClipSampleRange"/>.</summary>
    [JsonPropertyName("clip_sample")] public bool ClipSample { get; init; } = true;
    [JsonPropertyName("clip_sample_range")] public double ClipSampleRange { get; init; } = 1.0;
    /// <summary>Dynamic thresholding is not implemented: every scheduler rejects true.</summary>
    [JsonPropertyName("thresholding")] public bool Thresholding { get; init; }
    [JsonPropertyName("dynamic_thresholding_ratio")] public double DynamicThresholdingRatio { get; init; } = 0.995;
    [JsonPropertyName("sample_max_value")] public double SampleMaxValue { get; init; } = 1.0;

    // Inference timesteps.
    /// <summary>leading | trailing | linspace. Default leading, but linspace for DPM-Solver and the Euler schedulers.</summary>
    [JsonPropertyName("timestep_spacing")] public string TimestepSpacing { get; init; } = "leading";
    /// <summary>Added to leading timesteps only (diffusers ignores it for trailing and linspace).</summary>
    [JsonPropertyName("steps_offset")] public int StepsOffset { get; init; }

    // DDIM and PNDM: the ᾱ after the last step, 1 or ᾱ_0. Default true for DDIM, false for PNDM.
    [JsonPropertyName("set_alpha_to_one")] public bool SetAlphaToOne { get; init; } = true;

    // PNDM.
    /// <summary>
    /// true: PLMS only (Stable Diffusion 1.x's setting). false (diffusers' default) starts with Runge-Kutta steps,
    /// which are not implemented: PNDMScheduler rejects it.
    /// </summary>
    [JsonPropertyName("skip_prk_steps")] public bool SkipPrkSteps { get; init; }

    // Euler.
    /// <summary>How Euler interpolates the training sigmas at fractional timesteps: linear (the only one implemented) | log_linear.</summary>
    [JsonPropertyName("interpolation_type")] public string InterpolationType { get; init; } = "linear";
    /// <summary>discrete (the only one implemented) | continuous (v-prediction models fed 0.25·log σ as the timestep).</summary>
    [JsonPropertyName("timestep_type")] public string TimestepType { get; init; } = "discrete";

    // DDPM (fixed_small by default) and DPM-Solver (null by default).
    [JsonPropertyName("variance_type")] public string? VarianceType { get; init; }

    // DPM-Solver multistep; final_sigmas_type and the use_*_sigmas flags are Euler's too.
    [JsonPropertyName("solver_order")] public int SolverOrder { get; init; } = 2;
    [JsonPropertyName("algorithm_type")] public string AlgorithmType { get; init; } = "dpmsolver++";
    [JsonPropertyName("solver_type")] public string SolverType { get; init; } = "midpoint";
    [JsonPropertyName("lower_order_final")] public bool LowerOrderFinal { get; init; } = true;
    [JsonPropertyName("euler_at_final")] public bool EulerAtFinal { get; init; }
    /// <summary>zero | sigma_min.</summary>
    [JsonPropertyName("final_sigmas_type")] public string FinalSigmasType { get; init; } = "zero";
    [JsonPropertyName("lambda_min_clipped")] public double LambdaMinClipped { get; init; } = double.NegativeInfinity;
    [JsonPropertyName("use_karras_sigmas")] public bool UseKarrasSigmas { get; init; }
    [JsonPropertyName("use_exponential_sigmas")] public bool UseExponentialSigmas { get; init; }
    [JsonPropertyName("use_beta_sigmas")] public bool UseBetaSigmas { get; init; }
    [JsonPropertyName("use_lu_lambdas")] public bool UseLuLambdas { get; init; }
    [JsonPropertyName("use_flow_sigmas")] public bool UseFlowSigmas { get; init; }
    [JsonPropertyName("use_dynamic_shifting")] public bool UseDynamicShifting { get; init; }

    /// <summary>
    /// The JSON keys this config took from a file (the rest are class defaults). <see cref="ForClass"/> keeps
    /// these and re-defaults the others, so a DDPM file sampled with DDIM gets DDIM's defaults where the file is silent.
    /// </summary>
    [JsonIgnore] public IReadOnlySet<string> SpecifiedKeys { get; init; } = new HashSet<string>(StringComparer.Ordinal);

    /// <summary>diffusers' constructor defaults for <paramref name="className"/> (an unknown or null class gets DDPM/DDIM's).</summary>
    public static SchedulerConfig Defaults(string? className) => className switch
    {
        DDPMClassName => new SchedulerConfig { ClassName = className, VarianceType = "fixed_small" },
        DPMSolverMultistepClassName => new SchedulerConfig { ClassName = className, TimestepSpacing = "linspace" },
        PNDMClassName => new SchedulerConfig { ClassName = className, SetAlphaToOne = false },
        EulerDiscreteClassName or EulerAncestralDiscreteClassName => new SchedulerConfig { ClassName = className, TimestepSpacing = "linspace" },
        _ => new SchedulerConfig { ClassName = className },
    };

    /// <summary>Reads a scheduler_config.json.</summary>
    public static SchedulerConfig Load(string path)
    {
        if (Directory.Exists(path))
            throw new SchedulerConfigException($"'{path}' is a folder; pass the scheduler_config.json inside it (usually <model>/scheduler/scheduler_config.json).");
        if (!File.Exists(path))
            throw new SchedulerConfigException($"No scheduler config at '{path}'. Check the path; diffusers writes it as scheduler/scheduler_config.json beside the model.");
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (IOException e)
        {
            throw new SchedulerConfigException($"Cannot read '{path}': {e.Message}", e);
        }
        return Parse(text, path);
    }

    /// <summary>Parses the text of a scheduler_config.json; <paramref name="source"/> names it in error messages.</summary>
    public static SchedulerConfig Parse(string json, string? source = null)
    {
        string where = source is null ? "The scheduler config" : $"'{source}'";
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(QuoteNonFiniteLiterals(json), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new SchedulerConfigException($"{where} is not valid JSON ({Formats.Messages.OneLine(e.Message)}). The file is corrupt or not a scheduler_config.json.", e);
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new SchedulerConfigException($"{where} is not a JSON object; a scheduler_config.json is an object of constructor arguments.");

            string? className = null;
            if (root.TryGetProperty("_class_name", out var classElement))
            {
                if (classElement.ValueKind == JsonValueKind.String) className = classElement.GetString();
                else if (classElement.ValueKind != JsonValueKind.Null)
                    throw new SchedulerConfigException($"{where}: \"_class_name\" must be a string such as \"DDIMScheduler\".");
            }

            var config = Defaults(className);
            var specified = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in root.EnumerateObject())
            {
                if (property.Name == "_class_name" || !KeyedProperties.TryGetValue(property.Name, out var info))
                    continue;
                info.SetValue(config, ConvertValue(where, property.Name, info.PropertyType, property.Value));
                specified.Add(property.Name);
            }
            return config with { SpecifiedKeys = specified };
        }
    }

    /// <summary>
    /// This config as diffusers' <c>from_config</c> would give it to <paramref name="className"/>: keys the file
    /// specified are kept, the others take that class's defaults.
    /// </summary>
    public SchedulerConfig ForClass(string className)
    {
        var result = Defaults(className);
        foreach (var (key, info) in KeyedProperties)
        {
            if (SpecifiedKeys.Contains(key))
                info.SetValue(result, info.GetValue(this));
        }
        return result with { SpecifiedKeys = SpecifiedKeys };
    }

    private static readonly Dictionary<string, PropertyInfo> KeyedProperties = typeof(SchedulerConfig)
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .Select(p => (Property: p, Name: p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name))
        .Where(p => p.Name is not null && p.Name != "_class_name")
        .ToDictionary(p => p.Name!, p => p.Property, StringComparer.Ordinal);

    /// <summary>Keys where null is a value of its own (diffusers' None), not "use the default".</summary>
    private static readonly HashSet<string> NullableKeys = new(StringComparer.Ordinal) { "trained_betas", "variance_type" };

    private static object? ConvertValue(string where, string key, Type type, JsonElement value)
    {
        if (value.ValueKind == JsonValueKind.Null)
        {
            // None reaches diffusers' constructor as is: a flag becomes falsy; trained_betas/variance_type mean "not set".
            if (type == typeof(bool)) return false;
            if (NullableKeys.Contains(key)) return null;
            throw new SchedulerConfigException($"{where}: \"{key}\" is null, but it must be {Describe(type)}. Remove the key to use the default, or set a value.");
        }
        try
        {
            if (type == typeof(bool))
            {
                return value.ValueKind switch
                {
                    JsonValueKind.True => true,
                    JsonValueKind.False => false,
                    _ => throw new FormatException(),
                };
            }
            if (type == typeof(int))
            {
                if (value.ValueKind != JsonValueKind.Number) throw new FormatException();
                if (value.TryGetInt32(out int i)) return i;
                double d = value.GetDouble();
                if (d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue) return (int)d;
                throw new FormatException();
            }
            if (type == typeof(double)) return ReadDouble(value);
            if (type == typeof(string))
            {
                if (value.ValueKind != JsonValueKind.String) throw new FormatException();
                return value.GetString();
            }
            if (type == typeof(double[]))
            {
                if (value.ValueKind != JsonValueKind.Array) throw new FormatException();
                return value.EnumerateArray().Select(ReadDouble).ToArray();
            }
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            throw new SchedulerConfigException($"{where}: \"{key}\" must be {Describe(type)}, but the file has {value.GetRawText()}.");
        }
        throw new InvalidOperationException($"SchedulerConfig has no conversion for {type}.");
    }

    private static double ReadDouble(JsonElement value)
    {
        if (value.ValueKind == JsonValueKind.Number) return value.GetDouble();
        if (value.ValueKind == JsonValueKind.String)
        {
            return value.GetString() switch
            {
                "Infinity" => double.PositiveInfinity,
                "-Infinity" => double.NegativeInfinity,
                "NaN" => double.NaN,
                _ => throw new FormatException(),
            };
        }
        throw new FormatException();
    }

    private static string Describe(Type type) =>
        type == typeof(bool) ? "true or false"
        : type == typeof(int) ? "an integer"
        : type == typeof(double) ? "a number"
        : type == typeof(double[]) ? "an array of numbers"
        : "a string";

    /// <summary>
    /// Python's json module writes NaN, Infinity and -Infinity bare (diffusers' DPM-Solver config has
    /// <c>"lambda_min_clipped": -Infinity</c>); System.Text.Json rejects them, so they are quoted outside strings.
    /// </summary>
    private static string QuoteNonFiniteLiterals(string json)
    {
        if (!json.Contains("Infinity", StringComparison.Ordinal) && !json.Contains("NaN", StringComparison.Ordinal))
            return json;
        var builder = new StringBuilder(json.Length + 16);
        bool inString = false;
        for (int i = 0; i < json.Length; i++)
        {
            char c = json[i];
            if (inString)
            {
                builder.Append(c);
                if (c == '\\' && i + 1 < json.Length) builder.Append(json[++i]);
                else if (c == '"') inString = false;
                continue;
            }
            if (c == '"')
            {
                inString = true;
                builder.Append(c);
                continue;
            }
            string? literal = null;
            foreach (var candidate in (ReadOnlySpan<string>)["-Infinity", "Infinity", "NaN"])
            {
                if (string.CompareOrdinal(json, i, candidate, 0, candidate.Length) == 0)
                {
                    literal = candidate;
                    break;
                }
            }
            if (literal is null)
            {
                builder.Append(c);
                continue;
            }
            builder.Append('"').Append(literal).Append('"');
            i += literal.Length - 1;
        }
        return builder.ToString();
    }
}
