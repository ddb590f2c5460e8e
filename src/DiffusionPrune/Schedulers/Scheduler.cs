namespace DiffusionPrune.Schedulers;

/// <summary>Builds the scheduler a diffusers config names, or the one a user asks for over it.</summary>
public static class Scheduler
{
    /// <summary>The short names accepted as an override, with the diffusers class each one means.</summary>
    public static readonly IReadOnlyDictionary<string, string> ShortNames = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase)
    {
        ["ddpm"] = SchedulerConfig.DDPMClassName,
        ["ddim"] = SchedulerConfig.DDIMClassName,
        ["dpm++2m"] = SchedulerConfig.DPMSolverMultistepClassName,
        ["pndm"] = SchedulerConfig.PNDMClassName,
        ["euler"] = SchedulerConfig.EulerDiscreteClassName,
        ["euler-a"] = SchedulerConfig.EulerAncestralDiscreteClassName,
    };

    private static readonly string[] SupportedClasses =
        [
            SchedulerConfig.DDPMClassName, SchedulerConfig.DDIMClassName, SchedulerConfig.DPMSolverMultistepClassName,
            SchedulerConfig.PNDMClassName, SchedulerConfig.EulerDiscreteClassName, SchedulerConfig.EulerAncestralDiscreteClassName,
        ];

    /// <summary>Reads a scheduler_config.json and builds its scheduler (see <see cref="Create"/>).</summary>
    public static IDiffusionScheduler FromFile(string path, string? schedulerName = null, double ddimEta = 0.0) =>
        Create(SchedulerConfig.Load(path), schedulerName, ddimEta);

    /// <summary>
    /// The scheduler for <paramref name="config"/>: the class in its <c>_class_name</c>, or <paramref name="schedulerName"/>
    /// when given ("ddpm" | "ddim" | "dpm++2m" | "pndm" | "euler" | "euler-a", or a diffusers class name). With an override the noise schedule
    /// (betas, prediction_type, spacing, ...) still comes from the file, and keys the file does not set take the
    /// override class's defaults, as diffusers' <c>NewScheduler.from_config(old.config)</c> does. "dpm++2m" also
    /// pins algorithm_type dpmsolver++ and solver_order 2; "pndm" pins skip_prk_steps true (PLMS). <paramref name="ddimEta"/> is used by DDIM only.
    /// </summary>
    public static IDiffusionScheduler Create(SchedulerConfig config, string? schedulerName = null, double ddimEta = 0.0)
    {
        ArgumentNullException.ThrowIfNull(config);
        string className;
        if (!string.IsNullOrWhiteSpace(schedulerName))
        {
            className = ResolveName(schedulerName);
            config = config.ForClass(className);
            if (ShortNames.ContainsKey(schedulerName.Trim()) && className == SchedulerConfig.DPMSolverMultistepClassName)
                config = config with { AlgorithmType = "dpmsolver++", SolverOrder = 2 };
            // "pndm" means PLMS, the only PNDM path implemented (diffusers' default skip_prk_steps false is the Runge-Kutta one).
            if (ShortNames.ContainsKey(schedulerName.Trim()) && className == SchedulerConfig.PNDMClassName)
                config = config with { SkipPrkSteps = true };
        }
        else
        {
            className = config.ClassName ?? throw new ArgumentException(
                $"The scheduler config has no \"_class_name\". Name the scheduler to use: {SupportedNames()}.");
            if (!SupportedClasses.Contains(className))
                throw new NotSupportedException(
                    $"Scheduler class '{className}' is not supported. Supported: {SupportedNames()}. " +
                    "To sample a model whose config names another class, pass one of these names as the scheduler; the betas come from its config.");
        }

        return className switch
        {
            SchedulerConfig.DDPMClassName => new DDPMScheduler(config),
            SchedulerConfig.DDIMClassName => new DDIMScheduler(config, ddimEta),
            SchedulerConfig.PNDMClassName => new PNDMScheduler(config),
            SchedulerConfig.EulerDiscreteClassName => new EulerDiscreteScheduler(config),
            SchedulerConfig.EulerAncestralDiscreteClassName => new EulerAncestralDiscreteScheduler(config),
            _ => new DPMSolverMultistepScheduler(config),
        };
    }

    private static string ResolveName(string name)
    {
        if (ShortNames.TryGetValue(name.Trim(), out var className)) return className;
        var match = SupportedClasses.FirstOrDefault(c => string.Equals(c, name.Trim(), StringComparison.OrdinalIgnoreCase));
        return match ?? throw new NotSupportedException($"Unknown scheduler '{name}'. Supported: {SupportedNames()}.");
    }

    private static string SupportedNames() =>
        string.Join(", ", ShortNames.Select(p => $"{p.Key} ({p.Value})"));
}
