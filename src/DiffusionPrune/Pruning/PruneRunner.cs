using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning.Importance;
using DiffusionPrune.Runtime;
using DiffusionPrune.Training;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>One pruning job: a model, a criterion, a parameter target, and where to put the result.</summary>
public sealed record PruneRequest
{
    public required string ModelPath { get; init; }
    /// <summary>ecodiff | magnitude | random | taylor.</summary>
    public required string Method { get; init; }
    /// <summary>Fraction of the model's parameters to remove, strictly between 0 and 1.</summary>
    public required double TargetParams { get; init; }
    public required string OutputPath { get; init; }
    public string? SchedulerConfigPath { get; init; }
    public int Steps { get; init; } = 10;
    public int Iterations { get; init; } = 100;
    public int Calibration { get; init; } = 16;
    public long Seed { get; init; }
    public SelectionScope Scope { get; init; } = SelectionScope.Global;
    public double MinKeepFraction { get; init; } = 0.1;
    /// <summary>EcoDiff settings beyond iterations and seed (beta, learning rate, regulariser, gates, checkpointing).</summary>
    public EcoDiffOptions EcoDiff { get; init; } = new();
    /// <summary>
    /// EcoDiff: steer beta so the expected kept fraction settles at 1 − <see cref="TargetParams"/> (true), or keep beta
    /// fixed as the paper (false, default). Steering overshoots on the default U-Net: units closed to an exact-zero gate
    /// get no reconstruction gradient and cannot reopen (docs/BENCHMARKS.md), so it is an option, not the default.
    /// </summary>
    public bool SteerBetaToTarget { get; init; }

    /// <summary>
    /// Calibration images for methods that use them (taylor): <c>mnist</c>, an MNIST data file or a folder of PNG/JPEG
    /// images (<see cref="Data.ImageDatasets.Open"/>); null for the method's default. An error for data-free methods.
    /// </summary>
    public string? Data { get; init; }

    /// <summary>
    /// EcoDiff: classifier-free guidance for the calibration trajectories of a model with a null class (a DiT),
    /// ignored for other models. For runs over mixed models (batch plans); a single run sets
    /// <see cref="EcoDiffOptions.GuidanceScale"/>, which is an error on a model without a null class.
    /// </summary>
    public double? GuidanceIfConditional { get; init; }
}

public sealed record PruneReport(
    string Method, double TargetParams, double AchievedParams, long ParametersBefore, long ParametersAfter, long MacsBefore, long MacsAfter,
    IReadOnlyDictionary<string, double> KeptFractionPerLayer, double Seconds, long? PeakResidentBytes, JsonObject Settings, string OutputPath)
{
    public JsonObject ToJson()
    {
        var perLayer = new JsonObject();
        foreach (var (k, v) in KeptFractionPerLayer) perLayer[k] = Math.Round(v, 4);
        return new JsonObject
        {
            ["method"] = Method,
            ["settings"] = Settings.DeepClone(),
            ["target_removed_params"] = TargetParams,
            ["achieved_removed_params"] = AchievedParams,
            ["params_before"] = ParametersBefore,
            ["params_after"] = ParametersAfter,
            ["macs_before"] = MacsBefore,
            ["macs_after"] = MacsAfter,
            ["kept_fraction_per_layer"] = perLayer,
            ["seconds"] = Math.Round(Seconds, 2),
            ["peak_rss_bytes"] = PeakResidentBytes,
            ["output"] = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(OutputPath))), // the folder's name, never a local path
        };
    }
}

/// <summary>
/// The pipeline every criterion shares: score the units, select a plan for the parameter target, apply
/// the one surgery, save the smaller model in diffusers layout with its plan and a JSON report.
/// </summary>
public static class PruneRunner
{

    public static PruneReport Run(PruneRequest request, Device device, Action<string>? log = null, Action<EcoDiffIterationReport>? onIteration = null)
    {
        if (double.IsNaN(request.TargetParams) || request.TargetParams <= 0 || request.TargetParams >= 1)
            throw new ArgumentException($"--target-params must be strictly between 0 and 1 (got {request.TargetParams}); 0.2 removes 20% of the parameters.");
        var watch = Stopwatch.StartNew();
        using var model = ModelFamilies.Load(request.ModelPath, device: device);
        string schedulerPath = request.SchedulerConfigPath ?? DiffusersModelLoader.FindSchedulerConfig(request.ModelPath)
            ?? throw new FileNotFoundException($"'{request.ModelPath}' has no scheduler_config.json; pass --scheduler-config.");
        var groups = PrunableGroups.Of(model);
        var before = ModelCost.Measure(model);

        IImportanceCriterion criterion = request.Method.ToLowerInvariant() == "ecodiff"
            ? new EcoDiffPruner(request.EcoDiff with
            {
                Iterations = request.Iterations,
                GuidanceScale = request.GuidanceIfConditional is double g && model.NullClass is not null ? g : request.EcoDiff.GuidanceScale,
                TargetKeptFraction = request.SteerBetaToTarget ? 1 - request.TargetParams : request.EcoDiff.TargetKeptFraction,
            }, onIteration)
            : ImportanceCriteria.Create(request.Method);
        Data.IImageDataset? data = null;
        if (request.Data is not null)
        {
            if (ImportanceCriteria.Find(request.Method) is not { UsesImages: true })
                throw new ArgumentException($"--data is for methods that calibrate on images ({string.Join(", ", ImportanceCriteria.All.Where(e => e.UsesImages).Select(e => e.Name))}); " +
                    $"{criterion.Name} is data-free.");
            data = Data.ImageDatasets.Open(request.Data, model.InChannels, model.SampleSize[0], model.SampleSize[^1]);
            log?.Invoke($"calibration data: {data.Name}");
        }
        var context = new ImportanceContext(schedulerPath, request.Steps, request.Calibration, request.Seed, device, "ddim", log, data);
        log?.Invoke($"scoring {groups.Units.Count} unit groups with {criterion.Name}");
        var scores = criterion.Score(model, groups, context);
        var selection = PlanSelector.Select(groups, scores, request.TargetParams, request.Scope, request.MinKeepFraction);
        groups.ClearMasks();

        using var pruned = StructuralSurgery.Apply(model, selection.Plan);
        var after = ModelCost.Measure(pruned);
        DiffusersModelLoader.Save(pruned, request.OutputPath, new Dictionary<string, string> { ["dprune_method"] = criterion.Name });
        File.Copy(schedulerPath, Path.Combine(request.OutputPath, ModelFolder.SchedulerConfig), overwrite: true);
        selection.Plan.Save(Path.Combine(request.OutputPath, ModelFolder.PrunePlan));

        var kept = new SortedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var group in groups.Units)
            kept[group.Path] = selection.Plan.Keep.TryGetValue(group.Path, out var indices) ? indices.Length / (double)group.Units : 1.0;
        var settings = new JsonObject
        {
            ["model"] = Formats.SourceIdentity.Describe(request.ModelPath), // a name and hash, never a local path
            ["steps"] = request.Steps,
            ["calibration"] = request.Calibration,
            ["seed"] = request.Seed,
            ["scope"] = request.Scope.ToString(),
            ["min_keep_fraction"] = request.MinKeepFraction,
            ["scheduler_config"] = Formats.SourceIdentity.DescribeFile(schedulerPath),
        };
        if (data is not null) settings["data"] = data is Data.ImageFolderDataset folder
            ? $"image folder ({folder.Count} images{(folder.NumClasses is int c ? $", {c} classes" : "")})" // never a local path
            : data.Name;
        if (criterion is EcoDiffPruner eco)
        {
            settings["iterations"] = eco.Options.Iterations;
            settings["learning_rate"] = eco.Options.LearningRate;
            settings["beta"] = eco.Options.Beta;
            settings["regularizer"] = eco.Options.Regularizer.ToString();
            settings["parameter_weighted"] = eco.Options.ParameterWeighted;
            settings["target_kept_fraction"] = eco.Options.TargetKeptFraction;
            settings["beta_gain"] = eco.Options.BetaGain;
            if (eco.History.Count > 0) settings["final_beta"] = eco.History[^1].Beta;
            settings["gate"] = eco.Options.GateMode.ToString();
            settings["checkpointing"] = eco.Options.Checkpointing;
            settings["guidance_scale"] = eco.Options.GuidanceScale;
            settings["batch_size"] = eco.Options.BatchSize;
        }
        var report = new PruneReport(criterion.Name, request.TargetParams, selection.AchievedRemovedFraction, before.Parameters, after.Parameters,
            before.Macs, after.Macs, kept, watch.Elapsed.TotalSeconds, NativeMemory.PeakResidentBytes(), settings, request.OutputPath);
        Formats.ReportJson.Write(Path.Combine(request.OutputPath, ModelFolder.PruneReport), report.ToJson());
        return report;
    }
}
