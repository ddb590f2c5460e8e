using System.Diagnostics;
using System.Globalization;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using DiffusionPrune.Training;
using static TorchSharp.torch;

namespace DiffusionPrune.Cli.Benchmarks;

/// <summary>Peak memory and time of one EcoDiff iteration (what benchmarks/ecodiff-memory.sh prints).</summary>
public sealed record EcoDiffMemoryProbeResult(int Steps, bool Checkpointing, long? PeakResidentBytes, double Seconds)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"steps={Steps} checkpointing={(Checkpointing ? "on" : "off")} peak_rss_mb={(PeakResidentBytes is long b ? (b / 1048576.0).ToString("F1", CultureInfo.InvariantCulture) : "n/a")} seconds={Seconds:F2}");
}

/// <summary>
/// Runs one EcoDiff mask-optimisation iteration (one calibration sample, DDIM, <c>steps</c> steps) and prints
/// <c>steps=… checkpointing=… peak_rss_mb=… seconds=…</c>. Peak RSS is the process's VmHWM, so run each
/// configuration in a fresh process (the script does) — the figure includes the loaded model.
/// The original trajectory (the target) is computed before the clock starts.
/// </summary>
public static class EcoDiffMemoryProbe
{
    /// <param name="schedulerConfigPath">The model's scheduler_config.json; by default the one the loader finds with the model, or in its parent folder.</param>
    public static EcoDiffMemoryProbeResult Run(string modelPath, int steps, bool checkpointing, string? schedulerConfigPath = null)
    {
        string? parentConfig = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(modelPath.TrimEnd('/', '\\'))) ?? ".", ModelFolder.SchedulerConfig);
        string schedulerConfig = schedulerConfigPath
            ?? DiffusersModelLoader.FindSchedulerConfig(modelPath)
            ?? (File.Exists(parentConfig) ? parentConfig : null)
            ?? throw new FileNotFoundException($"No scheduler_config.json beside or above the model at '{modelPath}'; pass the model's scheduler config.");
        using var model = ModelFamilies.Load(modelPath);
        var groups = PrunableGroups.Of(model);
        using var scheduler = Scheduler.FromFile(schedulerConfig, "ddim");
        var options = new EcoDiffOptions { Iterations = 1, BatchSize = 1, Checkpointing = checkpointing };
        using var objective = new EcoDiffObjective(model, groups, scheduler, steps, calibrationSamples: 1, options, seed: 0);
        using var optimizer = new Training.AdamW(objective.NamedParameters());
        objective.PrecomputeTargets();
        NativeMemory.Trim();

        var clock = Stopwatch.StartNew();
        optimizer.ZeroGrad();
        objective.Backward(0);
        optimizer.Step(options.LearningRate);
        NativeMemory.Trim();
        var result = new EcoDiffMemoryProbeResult(steps, checkpointing, NativeMemory.PeakResidentBytes(), clock.Elapsed.TotalSeconds);
        Console.WriteLine(result);
        return result;
    }
}
