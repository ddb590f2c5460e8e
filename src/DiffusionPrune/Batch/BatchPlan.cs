using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Layers;
using DiffusionPrune.Training;

namespace DiffusionPrune.Batch;

/// <summary>
/// A batch plan a user wrote that cannot run: the message names the plan, the key and what to write instead.
/// An <see cref="ArgumentException"/> because the plan is the command's argument (so the CLI reports it as a user error, exit 2).
/// </summary>
public sealed class BatchPlanException(string message) : ArgumentException(Formats.Messages.OneLine(message));

/// <summary>One model of a sweep: <paramref name="Name"/> names its folder under the output (and its rows).</summary>
public sealed record BatchModel(string Name, string Path, string? SchedulerConfigPath);

/// <summary>The <c>prune</c> section: what every pruned item passes to <see cref="PruneRunner"/>.</summary>
public sealed record BatchPruneSettings
{
    public int Steps { get; init; } = 10;
    public int Iterations { get; init; } = 100;
    public int Calibration { get; init; } = 16;
    public long Seed { get; init; }
    public SelectionScope Scope { get; init; } = SelectionScope.Global;

    /// <summary>Layer methods: what the target measures (params, macs, latency).</summary>
    public LayerBudget Budget { get; init; } = LayerBudget.Params;

    /// <summary>Layer methods: knapsack or greedy.</summary>
    public LayerSelection Selection { get; init; } = LayerSelection.Knapsack;

    /// <summary>Width methods: kept ResNet channels and feed-forward neurons become multiples of this (1: any width).</summary>
    public int RoundTo { get; init; } = 1;
}

/// <summary>The optional <c>distill</c> section: every pruned model is distilled from its original before it is evaluated.</summary>
public sealed record BatchDistillSettings
{
    public KnowledgeDistillation Kd { get; init; } = KnowledgeDistillation.Normalized;
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 64;
    public double LearningRate { get; init; } = 1e-4;
    /// <summary><c>mnist</c>, or a data file or image folder (resolved against the plan's root).</summary>
    public string Data { get; init; } = "mnist";
    public long Seed { get; init; }

    public static string KdName(KnowledgeDistillation kd) => kd.ToString().ToLowerInvariant();
}

/// <summary>The <c>eval</c> section: what every item (the original too) passes to <see cref="Evaluation.ModelEvaluator"/>.</summary>
public sealed record BatchEvalSettings
{
    public int Samples { get; init; } = 500;
    public int Steps { get; init; } = 25;
    public long Seed { get; init; }
    public double GuidanceScale { get; init; } = 1.0;
    public string Scheduler { get; init; } = "ddim";
    public int BatchSize { get; init; } = 100;
    public int BootstrapResamples { get; init; } = 200;
    public string? FeatureNetFolder { get; init; }

    /// <summary>
    /// What samples the evaluation: torch (TorchSharp, the default) or onnx (ONNX Runtime on the CPU, from each model's
    /// bundle exported into the output's <c>onnx-cache/</c> and reused while the model is unchanged).
    /// </summary>
    public string Runtime { get; init; } = "torch";
}

/// <summary>The <c>latency</c> section: ONNX Runtime (and optionally TorchSharp) timings of every item's model.onnx.</summary>
public sealed record BatchLatencySettings
{
    public IReadOnlyList<int> Batches { get; init; } = [1, 16];
    public int Warmup { get; init; } = 3;
    public int Runs { get; init; } = 20;
    public int Threads { get; init; }
    public bool Torch { get; init; } = true;

    /// <summary>The batch the summary's speed-up ratio and the Pareto plot use: the largest timed.</summary>
    public int ReferenceBatch => Batches.Max();

    public LatencyOptions ToOptions() => new() { WarmupRuns = Warmup, TimedRuns = Runs, IntraOpThreads = Threads };
}

/// <summary>
/// One unit of a sweep: a model's original (<see cref="Method"/> null, the baseline row) or the model pruned by one
/// method to one target. It lives in its own folder under the plan's output; see <see cref="BatchRunner"/>.
/// </summary>
public sealed record BatchItem(BatchModel Model, string? Method, double? Target)
{
    public const string OriginalName = "original";

    public bool IsOriginal => Method is null;

    /// <summary>The folder under the output: <c>MODEL/original</c> or <c>MODEL/METHOD-TARGET</c>, e.g. <c>mnist-unet/magnitude-0.2</c>.</summary>
    public string RelativeFolder => Path.Combine(Model.Name, IsOriginal ? OriginalName : $"{Method}-{Target!.Value.ToString(CultureInfo.InvariantCulture)}");

    public override string ToString() => IsOriginal ? $"{Model.Name} original" : string.Create(CultureInfo.InvariantCulture, $"{Model.Name} {Method} {Target:0.##%}");
}

/// <summary>
/// A sweep of models x methods x targets, read from a JSON plan (documented in samples/plans/README.md).
/// Relative paths in the plan resolve against its <c>root</c>, which is itself relative to the plan file's folder
/// (default: that folder), so a plan means the same from any working directory. Every mistake a user can make is
/// found here, before any work starts, and reported as a <see cref="BatchPlanException"/>.
/// </summary>
public sealed record BatchPlan
{
    public required string PlanPath { get; init; }
    public required string Root { get; init; }
    public required string Output { get; init; }
    public required IReadOnlyList<BatchModel> Models { get; init; }
    public required IReadOnlyList<string> Methods { get; init; }
    public required IReadOnlyList<double> Targets { get; init; }
    public BatchPruneSettings Prune { get; init; } = new();
    public BatchEvalSettings Eval { get; init; } = new();
    public IReadOnlyList<ExportFormat> ExportFormats { get; init; } = [ExportFormat.Safetensors, ExportFormat.Onnx];

    /// <summary>Null (the default) when pruned models are evaluated as pruned; else how each is distilled first.</summary>
    public BatchDistillSettings? Distill { get; init; }

    /// <summary>Null when the plan turns latency off (<c>"latency": null</c>).</summary>
    public BatchLatencySettings? Latency { get; init; } = new();

    public static IReadOnlyList<string> KnownMethods => Pruning.Importance.ImportanceCriteria.Names; // the one registry

    /// <summary>Every item in run order: per model, the original first, then methods (plan order) x targets (ascending).</summary>
    public IReadOnlyList<BatchItem> Items()
    {
        var items = new List<BatchItem>();
        foreach (var model in Models)
        {
            items.Add(new BatchItem(model, null, null));
            foreach (var method in Methods)
                foreach (var target in Targets.Order())
                    items.Add(new BatchItem(model, method, target));
        }
        return items;
    }

    public string FolderOf(BatchItem item) => Path.Combine(Output, item.RelativeFolder);

    /// <summary>
    /// Everything an item's results depend on. A finished item whose recorded settings differ (say, more eval samples)
    /// is stale and is run again.
    /// </summary>
    public JsonObject SettingsOf(BatchItem item)
    {
        var settings = new JsonObject
        {
            ["model"] = Path.GetFullPath(item.Model.Path),
            ["scheduler_config"] = item.Model.SchedulerConfigPath is null ? null : Path.GetFullPath(item.Model.SchedulerConfigPath),
            ["method"] = item.Method ?? BatchItem.OriginalName,
            ["target_removed_params"] = item.Target,
        };
        if (!item.IsOriginal)
            settings["prune"] = new JsonObject
            {
                ["steps"] = Prune.Steps, ["iterations"] = Prune.Iterations, ["calibration"] = Prune.Calibration, ["seed"] = Prune.Seed,
                ["scope"] = Prune.Scope switch { SelectionScope.Global => "global", SelectionScope.PerLayer => "per-layer", _ => "per-type" },
                ["budget"] = Prune.Budget.ToString().ToLowerInvariant(), ["selection"] = Prune.Selection.ToString().ToLowerInvariant(),
            };
        if (!item.IsOriginal && Prune.RoundTo != 1 && Pruning.Importance.ImportanceCriteria.Find(item.Method!) is { RemovesLayers: false })
            settings["prune"]!["round_to"] = Prune.RoundTo;
        if (!item.IsOriginal && Distill is { } d)
            settings["distill"] = new JsonObject
            {
                ["kd"] = BatchDistillSettings.KdName(d.Kd), ["steps"] = d.Steps, ["batch"] = d.BatchSize, ["lr"] = d.LearningRate,
                ["data"] = d.Data == "mnist" ? "mnist" : Path.GetFullPath(d.Data), ["seed"] = d.Seed,
            };
        settings["eval"] = new JsonObject
        {
            ["samples"] = Eval.Samples, ["steps"] = Eval.Steps, ["seed"] = Eval.Seed, ["guidance_scale"] = Eval.GuidanceScale,
            ["scheduler"] = Eval.Scheduler, ["batch"] = Eval.BatchSize, ["bootstrap"] = Eval.BootstrapResamples,
            ["featurenet"] = Eval.FeatureNetFolder is null ? null : Path.GetFullPath(Eval.FeatureNetFolder),
        };
        if (Eval.Runtime != "torch") settings["eval"]!["runtime"] = Eval.Runtime; // torch items of earlier plans stay finished
        settings["export"] = new JsonObject { ["formats"] = new JsonArray(ExportFormats.Select(f => (JsonNode)FormatName(f)).ToArray()) };
        settings["latency"] = Latency is null ? null : new JsonObject
        {
            ["batches"] = new JsonArray(Latency.Batches.Select(b => (JsonNode)b).ToArray()),
            ["warmup"] = Latency.Warmup, ["runs"] = Latency.Runs, ["threads"] = Latency.Threads, ["torch"] = Latency.Torch,
        };
        return settings;
    }

    private static string FormatName(ExportFormat format) => format.ToString().ToLowerInvariant();

    public static BatchPlan Load(string planPath, string? outputOverride = null)
    {
        if (Directory.Exists(planPath))
            throw new BatchPlanException($"'{planPath}' is a folder; give the batch plan's JSON file (see samples/plans/).");
        if (!File.Exists(planPath))
            throw new FileNotFoundException($"No batch plan at '{planPath}'. See samples/plans/README.md for the format.", planPath);
        return Parse(File.ReadAllText(planPath), planPath, outputOverride);
    }

    private static readonly JsonDocumentOptions DocumentOptions = new() { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };

    /// <summary>Parses and validates a plan; <paramref name="planPath"/> anchors relative paths and names the plan in errors.</summary>
    public static BatchPlan Parse(string json, string planPath, string? outputOverride = null)
    {
        string name = Path.GetFileName(planPath);
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, DocumentOptions);
        }
        catch (JsonException e)
        {
            throw new BatchPlanException($"{name} is not valid JSON (line {e.LineNumber + 1}): {Formats.Messages.OneLine(e.Message)}");
        }
        using (document)
        {
            var reader = new PlanReader(name);
            var top = document.RootElement;
            reader.Object(top, "the plan", "description", "root", "output", "models", "methods", "targets", "prune", "distill", "eval", "export", "latency");

            string planFolder = Path.GetDirectoryName(Path.GetFullPath(planPath))!;
            string root = Path.GetFullPath(Path.Combine(planFolder, reader.String(top, "root") ?? "."));
            string Resolve(string path) => Path.GetFullPath(Path.Combine(root, path));

            string output = outputOverride is not null ? Path.GetFullPath(outputOverride)
                : reader.String(top, "output") is string o ? Resolve(o)
                : throw new BatchPlanException($"{name}: give \"output\", the folder for the results (e.g. \"out/batch-mnist\"), or pass --output.");

            var models = ReadModels(reader, top, Resolve);
            var methods = ReadMethods(reader, top);
            var targets = ReadTargets(reader, top);
            var prune = ReadPrune(reader, top);
            var distill = ReadDistill(reader, top, Resolve);
            var eval = ReadEval(reader, top, Resolve);
            var formats = ReadFormats(reader, top);
            var latency = ReadLatency(reader, top);
            if (latency is not null && !formats.Contains(ExportFormat.Onnx))
                throw new BatchPlanException($"{name}: \"latency\" times each model.onnx, so \"export\".\"formats\" must include \"onnx\" (or set \"latency\": null).");

            return new BatchPlan
            {
                PlanPath = Path.GetFullPath(planPath), Root = root, Output = output, Models = models, Methods = methods, Targets = targets,
                Prune = prune, Distill = distill, Eval = eval, ExportFormats = formats, Latency = latency,
            };
        }
    }

    private static List<BatchModel> ReadModels(PlanReader reader, JsonElement top, Func<string, string> resolve)
    {
        var array = reader.Array(top, "models", "a list of model folders, e.g. [\"samples/models/mnist-unet\"]");
        var models = new List<BatchModel>();
        foreach (var entry in array)
        {
            string path;
            string? modelName = null, scheduler = null;
            if (entry.ValueKind == JsonValueKind.String)
            {
                path = entry.GetString()!;
            }
            else if (entry.ValueKind == JsonValueKind.Object)
            {
                reader.Object(entry, "a \"models\" entry", "path", "name", "scheduler_config");
                path = reader.String(entry, "path") ?? throw new BatchPlanException($"{reader.Plan}: a \"models\" entry needs \"path\", the model folder.");
                modelName = reader.String(entry, "name");
                scheduler = reader.String(entry, "scheduler_config") is string s ? resolve(s) : null;
            }
            else
            {
                throw new BatchPlanException($"{reader.Plan}: each \"models\" entry is a model folder path or {{\"path\": ..., \"name\": ..., \"scheduler_config\": ...}}.");
            }
            string folder = resolve(path);
            string modelFolder;
            try
            {
                modelFolder = DiffusersModelLoader.ResolveModelFolder(folder);
            }
            catch (Exception e) when (e is DirectoryNotFoundException or ModelFormatException)
            {
                throw new BatchPlanException($"{reader.Plan}: model '{path}' (resolved to {folder}) cannot be used: {e.Message}");
            }
            if (scheduler is not null && !File.Exists(scheduler))
                throw new BatchPlanException($"{reader.Plan}: model '{path}': scheduler_config '{scheduler}' does not exist.");
            if (scheduler is null && DiffusersModelLoader.FindSchedulerConfig(modelFolder) is null)
                throw new BatchPlanException($"{reader.Plan}: model '{path}' has no scheduler_config.json; give one: {{\"path\": \"{path}\", \"scheduler_config\": \"...\"}}.");
            CheckEvaluable(reader, path, modelFolder);
            modelName ??= Path.GetFileName(folder.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
            if (modelName.Length == 0 || modelName.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')) || modelName is "." or "..")
                throw new BatchPlanException($"{reader.Plan}: model name '{modelName}' must be letters, digits, '-', '_' or '.' (it names a folder); set \"name\".");
            if (models.Any(m => string.Equals(m.Name, modelName, StringComparison.OrdinalIgnoreCase)))
                throw new BatchPlanException($"{reader.Plan}: two models are named '{modelName}'; give one a different \"name\".");
            models.Add(new BatchModel(modelName, folder, scheduler));
        }
        if (models.Count == 0)
            throw new BatchPlanException($"{reader.Plan}: \"models\" is empty; list at least one model folder.");
        return models;
    }

    /// <summary>The evaluator compares with MNIST; say so now rather than after the first model has been pruned.</summary>
    private static void CheckEvaluable(PlanReader reader, string path, string modelFolder)
    {
        JsonNode? config;
        try
        {
            config = JsonNode.Parse(File.ReadAllText(Path.Combine(modelFolder, ModelFolder.Config)));
        }
        catch (JsonException e)
        {
            throw new BatchPlanException($"{reader.Plan}: model '{path}' has an unreadable config.json: {Formats.Messages.OneLine(e.Message)}");
        }
        int? channels = config?["in_channels"] is JsonValue c && c.TryGetValue<int>(out var ci) ? ci : null;
        int? size = config?["sample_size"] switch
        {
            JsonValue v when v.TryGetValue<int>(out var s) => s,
            JsonArray { Count: > 0 } a when a[0] is JsonValue v0 && v0.TryGetValue<int>(out var s0) => s0,
            _ => null,
        };
        if (channels is not null && channels != 1 || size is not null && size != 32)
            throw new BatchPlanException($"{reader.Plan}: model '{path}' makes {channels} x {size} x {size} samples, but the evaluation compares with MNIST (1 x 32 x 32).");
    }

    private static List<string> ReadMethods(PlanReader reader, JsonElement top)
    {
        var methods = new List<string>();
        foreach (var entry in reader.Array(top, "methods", $"a list of pruning methods from {string.Join(", ", KnownMethods)}"))
        {
            string method = entry.ValueKind == JsonValueKind.String ? entry.GetString()!.Trim().ToLowerInvariant()
                : throw new BatchPlanException($"{reader.Plan}: \"methods\" holds {entry.GetRawText()}; give method names as strings.");
            if (!KnownMethods.Contains(method))
                throw new BatchPlanException($"{reader.Plan}: \"methods\" has '{entry.GetString()}', which is not a pruning method; use {string.Join(", ", KnownMethods)}.");
            if (methods.Contains(method))
                throw new BatchPlanException($"{reader.Plan}: \"methods\" lists '{method}' twice.");
            methods.Add(method);
        }
        if (methods.Count == 0)
            throw new BatchPlanException($"{reader.Plan}: \"methods\" is empty; list at least one of {string.Join(", ", KnownMethods)}.");
        return methods;
    }

    private static List<double> ReadTargets(PlanReader reader, JsonElement top)
    {
        var targets = new List<double>();
        foreach (var entry in reader.Array(top, "targets", "a list of fractions of parameters to remove, e.g. [0.1, 0.2, 0.3]"))
        {
            if (entry.ValueKind != JsonValueKind.Number || !entry.TryGetDouble(out double target) || !(target > 0 && target < 1))
                throw new BatchPlanException($"{reader.Plan}: \"targets\" has {entry.GetRawText()}; each target is the fraction of parameters to remove, strictly between 0 and 1 (0.2 removes 20%).");
            if (targets.Contains(target))
                throw new BatchPlanException($"{reader.Plan}: \"targets\" lists {entry.GetRawText()} twice.");
            targets.Add(target);
        }
        if (targets.Count == 0)
            throw new BatchPlanException($"{reader.Plan}: \"targets\" is empty; give at least one fraction to remove, e.g. [0.2].");
        return targets;
    }

    private static BatchPruneSettings ReadPrune(PlanReader reader, JsonElement top)
    {
        var defaults = new BatchPruneSettings();
        if (!reader.Section(top, "prune", out var section)) return defaults;
        reader.Object(section, "\"prune\"", "steps", "iterations", "calibration", "seed", "scope", "budget", "selection", "round_to");
        return new BatchPruneSettings
        {
            Steps = reader.Int(section, "prune", "steps", defaults.Steps, 1),
            Iterations = reader.Int(section, "prune", "iterations", defaults.Iterations, 1),
            Calibration = reader.Int(section, "prune", "calibration", defaults.Calibration, 1),
            Seed = reader.Long(section, "prune", "seed", defaults.Seed),
            RoundTo = reader.Int(section, "prune", "round_to", defaults.RoundTo, 1),
            Scope = reader.String(section, "scope") switch
            {
                null or "global" => SelectionScope.Global,
                "per-layer" => SelectionScope.PerLayer,
                "per-type" => SelectionScope.PerType,
                var other => throw new BatchPlanException($"{reader.Plan}: \"prune\".\"scope\" is '{other}'; use global, per-layer or per-type."),
            },
            Budget = reader.String(section, "budget") switch
            {
                null or "params" => LayerBudget.Params,
                "macs" => LayerBudget.Macs,
                "latency" => LayerBudget.Latency,
                var other => throw new BatchPlanException($"{reader.Plan}: \"prune\".\"budget\" is '{other}'; use params, macs or latency (what a layer method's target measures)."),
            },
            Selection = reader.String(section, "selection") switch
            {
                null or "knapsack" => LayerSelection.Knapsack,
                "greedy" => LayerSelection.Greedy,
                var other => throw new BatchPlanException($"{reader.Plan}: \"prune\".\"selection\" is '{other}'; use knapsack or greedy."),
            },
        };
    }

    private static BatchDistillSettings? ReadDistill(PlanReader reader, JsonElement top, Func<string, string> resolve)
    {
        var defaults = new BatchDistillSettings();
        if (!reader.Section(top, "distill", out var section)) return null;
        reader.Object(section, "\"distill\"", "kd", "steps", "batch", "lr", "data", "seed");
        double lr = reader.Double(section, "distill", "lr", defaults.LearningRate);
        if (!(lr > 0) || !double.IsFinite(lr))
            throw new BatchPlanException($"{reader.Plan}: \"distill\".\"lr\" must be a positive number (got {lr}).");
        string data = reader.String(section, "data") ?? defaults.Data;
        if (data != "mnist")
        {
            data = resolve(data);
            if (!File.Exists(data) && !Directory.Exists(data))
                throw new BatchPlanException($"{reader.Plan}: \"distill\".\"data\" '{data}' does not exist; give mnist, an MNIST data file or a folder of images.");
        }
        return new BatchDistillSettings
        {
            Kd = reader.String(section, "kd") switch
            {
                null or "normalized" => KnowledgeDistillation.Normalized,
                "plain" => KnowledgeDistillation.Plain,
                "none" => KnowledgeDistillation.None,
                var other => throw new BatchPlanException($"{reader.Plan}: \"distill\".\"kd\" is '{other}'; use normalized, plain or none."),
            },
            Steps = reader.Int(section, "distill", "steps", defaults.Steps, 1),
            BatchSize = reader.Int(section, "distill", "batch", defaults.BatchSize, 1),
            LearningRate = lr,
            Data = data,
            Seed = reader.Long(section, "distill", "seed", defaults.Seed),
        };
    }

    private static BatchEvalSettings ReadEval(PlanReader reader, JsonElement top, Func<string, string> resolve)
    {
        var defaults = new BatchEvalSettings();
        if (!reader.Section(top, "eval", out var section)) return defaults;
        reader.Object(section, "\"eval\"", "samples", "steps", "seed", "guidance_scale", "scheduler", "batch", "bootstrap", "featurenet", "runtime");
        string runtime = reader.String(section, "runtime") ?? defaults.Runtime;
        if (runtime is not ("torch" or "onnx"))
            throw new BatchPlanException($"{reader.Plan}: \"eval\".\"runtime\" is '{runtime}'; use torch or onnx.");
        string scheduler = reader.String(section, "scheduler") ?? defaults.Scheduler;
        if (scheduler is not ("ddim" or "ddpm" or "dpm++2m"))
            throw new BatchPlanException($"{reader.Plan}: \"eval\".\"scheduler\" is '{scheduler}'; use ddim, ddpm or dpm++2m.");
        string? featureNet = reader.String(section, "featurenet") is string f ? resolve(f) : null;
        if (featureNet is not null && !Directory.Exists(featureNet))
            throw new BatchPlanException($"{reader.Plan}: \"eval\".\"featurenet\" folder '{featureNet}' does not exist.");
        double guidance = reader.Double(section, "eval", "guidance_scale", defaults.GuidanceScale);
        if (!(guidance >= 0))
            throw new BatchPlanException($"{reader.Plan}: \"eval\".\"guidance_scale\" must be 0 or more (1 is no guidance).");
        return new BatchEvalSettings
        {
            Samples = reader.Int(section, "eval", "samples", defaults.Samples, 2),
            Steps = reader.Int(section, "eval", "steps", defaults.Steps, 1),
            Seed = reader.Long(section, "eval", "seed", defaults.Seed),
            GuidanceScale = guidance,
            Scheduler = scheduler,
            BatchSize = reader.Int(section, "eval", "batch", defaults.BatchSize, 1),
            BootstrapResamples = reader.Int(section, "eval", "bootstrap", defaults.BootstrapResamples, 1),
            Runtime = runtime,
            FeatureNetFolder = featureNet,
        };
    }

    private static IReadOnlyList<ExportFormat> ReadFormats(PlanReader reader, JsonElement top)
    {
        if (!reader.Section(top, "export", out var section)) return [ExportFormat.Safetensors, ExportFormat.Onnx];
        reader.Object(section, "\"export\"", "formats");
        if (!section.TryGetProperty("formats", out var formats)) return [ExportFormat.Safetensors, ExportFormat.Onnx];
        string list = formats.ValueKind switch
        {
            JsonValueKind.String => formats.GetString()!,
            JsonValueKind.Array when formats.EnumerateArray().All(f => f.ValueKind == JsonValueKind.String) => string.Join(",", formats.EnumerateArray().Select(f => f.GetString())),
            _ => throw new BatchPlanException($"{reader.Plan}: \"export\".\"formats\" is a list of safetensors and/or onnx, e.g. [\"safetensors\", \"onnx\"]."),
        };
        try
        {
            return ModelExporter.ParseFormats(list);
        }
        catch (ArgumentException e)
        {
            throw new BatchPlanException($"{reader.Plan}: \"export\".\"formats\": {e.Message.Replace("--format", "format", StringComparison.Ordinal)}");
        }
    }

    private static BatchLatencySettings? ReadLatency(PlanReader reader, JsonElement top)
    {
        var defaults = new BatchLatencySettings();
        if (top.TryGetProperty("latency", out var nullable) && nullable.ValueKind == JsonValueKind.Null) return null;
        if (!reader.Section(top, "latency", out var section)) return defaults;
        reader.Object(section, "\"latency\"", "batches", "warmup", "runs", "threads", "torch");
        IReadOnlyList<int> batches = defaults.Batches;
        if (section.TryGetProperty("batches", out var array))
        {
            if (array.ValueKind != JsonValueKind.Array || array.GetArrayLength() == 0
                || array.EnumerateArray().Any(b => b.ValueKind != JsonValueKind.Number || !b.TryGetInt32(out int v) || v < 1))
                throw new BatchPlanException($"{reader.Plan}: \"latency\".\"batches\" is a list of batch sizes of 1 or more, e.g. [1, 16].");
            batches = array.EnumerateArray().Select(b => b.GetInt32()).Distinct().ToArray();
        }
        bool torch = defaults.Torch;
        if (section.TryGetProperty("torch", out var t))
            torch = t.ValueKind is JsonValueKind.True or JsonValueKind.False ? t.GetBoolean()
                : throw new BatchPlanException($"{reader.Plan}: \"latency\".\"torch\" is true or false (also time TorchSharp's forward pass).");
        return new BatchLatencySettings
        {
            Batches = batches,
            Warmup = reader.Int(section, "latency", "warmup", defaults.Warmup, 0),
            Runs = reader.Int(section, "latency", "runs", defaults.Runs, 1),
            Threads = reader.Int(section, "latency", "threads", defaults.Threads, 0),
            Torch = torch,
        };
    }

    /// <summary>Typed reads with errors that name the plan and the key.</summary>
    private sealed class PlanReader(string plan)
    {
        public string Plan { get; } = plan;

        public void Object(JsonElement element, string what, params string[] allowed)
        {
            if (element.ValueKind != JsonValueKind.Object)
                throw new BatchPlanException($"{Plan}: {what} must be a JSON object {{...}}.");
            foreach (var property in element.EnumerateObject())
                if (!allowed.Contains(property.Name))
                    throw new BatchPlanException($"{Plan}: {what} has an unknown key \"{property.Name}\"; known keys: {string.Join(", ", allowed)}.");
        }

        public bool Section(JsonElement top, string key, out JsonElement section)
        {
            if (!top.TryGetProperty(key, out section) || section.ValueKind == JsonValueKind.Null) return false;
            if (section.ValueKind != JsonValueKind.Object)
                throw new BatchPlanException($"{Plan}: \"{key}\" must be a JSON object {{...}}.");
            return true;
        }

        public JsonElement.ArrayEnumerator Array(JsonElement top, string key, string what)
        {
            if (!top.TryGetProperty(key, out var array))
                throw new BatchPlanException($"{Plan}: \"{key}\" is missing; give {what}.");
            if (array.ValueKind != JsonValueKind.Array)
                throw new BatchPlanException($"{Plan}: \"{key}\" must be {what}.");
            return array.EnumerateArray();
        }

        public string? String(JsonElement obj, string key)
        {
            if (!obj.TryGetProperty(key, out var value) || value.ValueKind == JsonValueKind.Null) return null;
            if (value.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(value.GetString()))
                throw new BatchPlanException($"{Plan}: \"{key}\" must be a non-empty string (got {value.GetRawText()}).");
            return value.GetString()!;
        }

        public int Int(JsonElement obj, string section, string key, int fallback, int min)
        {
            if (!obj.TryGetProperty(key, out var value)) return fallback;
            if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt32(out int result) || result < min)
                throw new BatchPlanException($"{Plan}: \"{section}\".\"{key}\" must be a whole number of at least {min} (got {value.GetRawText()}).");
            return result;
        }

        public long Long(JsonElement obj, string section, string key, long fallback)
        {
            if (!obj.TryGetProperty(key, out var value)) return fallback;
            if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out long result))
                throw new BatchPlanException($"{Plan}: \"{section}\".\"{key}\" must be a whole number (got {value.GetRawText()}).");
            return result;
        }

        public double Double(JsonElement obj, string section, string key, double fallback)
        {
            if (!obj.TryGetProperty(key, out var value)) return fallback;
            if (value.ValueKind != JsonValueKind.Number || !value.TryGetDouble(out double result))
                throw new BatchPlanException($"{Plan}: \"{section}\".\"{key}\" must be a number (got {value.GetRawText()}).");
            return result;
        }
    }
}
