using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning.Importance;
using DiffusionPrune.Pruning.Layers;
using DiffusionPrune.Runtime;
using DiffusionPrune.Training;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>One pruning job: a model, a criterion, a parameter target, and where to put the result.</summary>
public sealed record PruneRequest
{
    public required string ModelPath { get; init; }
    /// <summary>A name from <see cref="ImportanceCriteria"/>: ecodiff | magnitude | random | taylor (width) or laptop | ldpruner | random-layer (layers).</summary>
    public required string Method { get; init; }
    /// <summary>
    /// Fraction to remove, strictly between 0 and 1: of the parameters for width methods; of the <see cref="Budget"/>
    /// (parameters, MACs or latency) for layer methods.
    /// </summary>
    public required double TargetParams { get; init; }

    /// <summary>Width methods: kept widths of ResNet channels and feed-forward neurons become multiples of this (1, the default: any width).</summary>
    public int RoundTo { get; init; } = 1;

    /// <summary>Layer methods: what the target measures. Default parameters.</summary>
    public LayerBudget Budget { get; init; } = LayerBudget.Params;

    /// <summary>Layer methods: knapsack (default) or the greedy score-per-cost baseline.</summary>
    public LayerSelection Selection { get; init; } = LayerSelection.Knapsack;

    /// <summary>laptop: random layer subsets of the additivity check (default 20).</summary>
    public int AdditivitySubsets { get; init; } = 20;

    /// <summary>Layer methods with a latency budget: the batch the latency table is measured at (default 1).</summary>
    public int LatencyBatch { get; init; } = 1;
    /// <summary>The folder for the pruned model; <see cref="PruneRunner.Run"/> needs it, <see cref="PruneRunner.Prune"/> keeps the model in memory.</summary>
    public string? OutputPath { get; init; }
    public string? SchedulerConfigPath { get; init; }
    public int Steps { get; init; } = 10;
    public int Iterations { get; init; } = 100;
    public int Calibration { get; init; } = 16;
    public long Seed { get; init; }
    public SelectionScope Scope { get; init; } = SelectionScope.Global;
    public double MinKeepFraction { get; init; } = 0.1;
    /// <summary>Taylor settings (timestep stride, informative-timestep threshold, micro-batch, normalisation); the defaults are Diff-Pruning's, on a coarser grid.</summary>
    public TaylorOptions Taylor { get; init; } = new();

    /// <summary>EcoDiff settings beyond iterations and seed (beta, learning rate, regulariser, gates, checkpointing).</summary>
    public EcoDiffOptions EcoDiff { get; init; } = new();
    /// <summary>
    /// EcoDiff: steer beta so the expected kept fraction settles at 1 − <see cref="TargetParams"/> (true), or keep beta
    /// fixed as the paper (false, default). Steering overshoots on the default U-Net: units closed to an exact-zero gate
    /// get no reconstruction gradient and cannot reopen (docs/BENCHMARKS.md), so it is an option, not the default.
    /// </summary>
    public bool SteerBetaToTarget { get; init; }

    /// <summary>
    /// EcoDiff: continue a run into the same <see cref="OutputPath"/> that was stopped (Ctrl+C, kill -9, a crash) from
    /// its last checkpoint (<see cref="EcoDiffCheckpoint.FolderFor"/>); the scores equal the uninterrupted run's.
    /// </summary>
    public bool Resume { get; init; }

    /// <summary>EcoDiff: iterations between checkpoints when there is an <see cref="OutputPath"/>. Default 10.</summary>
    public int CheckpointEvery { get; init; } = 10;

    /// <summary>
    /// Calibration images for methods that use them (taylor, learnable-depth): <c>mnist</c>, an MNIST data file or a folder
    /// of PNG/JPEG images (<see cref="Data.ImageDatasets.Open"/>); null for the method's default. An error for data-free
    /// methods, and for a Stable Diffusion pipeline, whose image methods calibrate on its own samples from <see cref="Prompts"/>.
    /// </summary>
    public string? Data { get; init; }

    /// <summary>
    /// A Stable Diffusion pipeline folder: the calibration prompts (CLI <c>--prompts FILE</c>, one per line), encoded by the
    /// pipeline's tokenizer and text encoder. EcoDiff and the layer methods follow trajectories from them (calibration
    /// sample k follows prompt k mod the count); taylor and learnable-depth calibrate on latents the pipeline samples from
    /// them (<see cref="TeacherSamplesPerPrompt"/>). Null takes <see cref="PruneRunner.DefaultCalibrationPrompts"/>. Refused
    /// for models without text conditioning and for methods that do not run the model.
    /// </summary>
    public IReadOnlyList<string>? Prompts { get; init; }

    /// <summary>
    /// A Stable Diffusion pipeline folder: saved prompt embeddings to calibrate on instead of <see cref="Prompts"/> (CLI
    /// <c>--prompt-embeddings FILE</c>; the format is <see cref="Pipeline.StableDiffusion.PromptEmbeddingsFile"/>): each row
    /// is one calibration prompt's states, used as <see cref="Prompts"/>' encodings would be. Refused with
    /// <see cref="Prompts"/>, and where prompts are.
    /// </summary>
    public string? PromptEmbeddingsPath { get; init; }

    /// <summary>
    /// taylor and learnable-depth on a Stable Diffusion pipeline: latents the pipeline's own U-Net samples per prompt, the
    /// calibration images (<see cref="TeacherSamples"/>). Null: enough for <see cref="Calibration"/>, ceil(calibration / prompts).
    /// Refused (like the two below) for other models and methods, which sample no calibration latents.
    /// </summary>
    public int? TeacherSamplesPerPrompt { get; init; }

    /// <summary>taylor and learnable-depth on a pipeline: DDIM steps per calibration latent. Null: 25, as <c>dprune distill</c>.</summary>
    public int? TeacherSampleSteps { get; init; }

    /// <summary>taylor and learnable-depth on a pipeline: the classifier-free guidance the latents are sampled with. Null: 7.5, as <c>dprune distill</c>.</summary>
    public double? TeacherGuidanceScale { get; init; }

    /// <summary>
    /// EcoDiff: classifier-free guidance for the calibration trajectories of a model with a null class (a DiT) or of a
    /// Stable Diffusion pipeline's U-Net (against the empty negative prompt),
    /// ignored for other models. For runs over mixed models (batch plans); a single run sets
    /// <see cref="EcoDiffOptions.GuidanceScale"/>, which is an error on a model without a null class.
    /// </summary>
    public double? GuidanceIfConditional { get; init; }
}

public sealed record PruneReport(
    string Method, double TargetParams, double AchievedParams, long ParametersBefore, long ParametersAfter, long MacsBefore, long MacsAfter,
    IReadOnlyDictionary<string, double> KeptFractionPerLayer, double Seconds, long? PeakResidentBytes, JsonObject Settings, string? OutputPath,
    LayerPruneSummary? Layers = null)
{
    public JsonObject ToJson()
    {
        var perLayer = new JsonObject();
        foreach (var (k, v) in KeptFractionPerLayer) perLayer[k] = Math.Round(v, 4);
        var json = new JsonObject
        {
            ["method"] = Method,
            ["settings"] = Settings.DeepClone(),
            ["target_removed_params"] = Layers is { Budget: not LayerBudget.Params } ? null : TargetParams,
            ["achieved_removed_params"] = AchievedParams,
            ["params_before"] = ParametersBefore,
            ["params_after"] = ParametersAfter,
            ["macs_before"] = MacsBefore,
            ["macs_after"] = MacsAfter,
            ["kept_fraction_per_layer"] = perLayer,
            ["seconds"] = Math.Round(Seconds, 2),
            ["peak_rss_bytes"] = PeakResidentBytes,
            ["output"] = OutputPath is null ? null : Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(OutputPath))), // the folder's name, never a local path
        };
        if (Layers is not null)
        {
            json["removed_layers"] = new JsonArray(Layers.Removed.Select(p => (JsonNode?)p).ToArray());
            json["layer_selection"] = Layers.ToJson();
            if (Layers.Additivity is not null)
            {
                json["additivity_pearson_r"] = Layers.Additivity.PearsonR is double r ? Math.Round(r, 4) : null;
                json["additivity_spearman_rho"] = Layers.Additivity.SpearmanRho is double rho ? Math.Round(rho, 4) : null;
            }
        }
        return json;
    }
}

/// <summary>
/// The pipeline every criterion shares: score the units, select a plan for the parameter target, apply
/// the one surgery, save the smaller model in diffusers layout with its plan and a JSON report.
/// </summary>
public static class PruneRunner
{
    /// <summary>
    /// The prompts EcoDiff calibrates a Stable Diffusion pipeline's U-Net on when the request gives none: eight generic
    /// captions in the style of the COCO captions the paper calibrates on (people, animals, objects, indoor and outdoor
    /// scenes, a painting), so no subject dominates the masks. For a real run give your own, ideally ~100 (the paper's count).
    /// </summary>
    public static IReadOnlyList<string> DefaultCalibrationPrompts { get; } =
    [
        "a photograph of a dog sitting on a wooden porch",
        "a city street at night with cars and neon lights",
        "a bowl of fresh fruit on a kitchen table",
        "a portrait of a smiling woman in a red coat",
        "a mountain lake surrounded by pine trees at sunrise",
        "a red bicycle leaning against a brick wall",
        "an oil painting of a sailing ship in a storm",
        "a cozy living room with a sofa and a fireplace",
    ];

    /// <summary>
    /// What pruning <paramref name="request"/> holds in memory, from the model's estimate: its method's scoring
    /// (<see cref="ImportanceCriteria.Entry.Workload"/>) at its batch, plus the pruned copy it builds.
    /// </summary>
    public static ResourceNeed MemoryNeed(ResourceEstimate model, PruneRequest request)
    {
        var entry = ImportanceCriteria.Find(request.Method)
            ?? throw new ArgumentException($"Unknown importance criterion '{request.Method}'. Known criteria: {string.Join(", ", ImportanceCriteria.Names)}.");
        int guidance = request.GuidanceIfConditional is > 1 || request.EcoDiff.GuidanceScale > 1 ? 2 : 1; // conditional + unconditional
        int noises = Math.Max(1, request.Calibration);
        var scoring = entry.Workload switch
        {
            PruneWorkload.WeightsOnly => model.Inference(1),
            PruneWorkload.Forward => model.Inference(noises * guidance),
            PruneWorkload.Gradients => model.Gradients(Math.Min(noises, request.Taylor.MicroBatch)),
            // one calibration batch at a time, and the final latents of every calibration noise as targets
            PruneWorkload.MaskLearning => model.MaskLearning(Math.Min(noises, request.EcoDiff.BatchSize) * guidance, Math.Max(1, request.Steps),
                    request.EcoDiff.Checkpointing) is var step
                ? step with { ActivationBytes = ResourceEstimate.Add(step.ActivationBytes, ResourceEstimate.Scale(model.SampleBytes, noises)) } : null!,
            _ => model.Training(new LearnableDepthOptions().BatchSize),
        };
        return scoring with { Workload = $"pruning with {entry.Name} ({scoring.Workload})", WeightBytes = ResourceEstimate.Add(scoring.WeightBytes, model.ParameterBytes) };
    }


    /// <summary>"heads,ffn,channels": the unit kinds EcoDiff gated, as the CLI names them.</summary>
    public static string UnitTypesName(EcoDiffUnitTypes types) => string.Join(",",
        new[] { (EcoDiffUnitTypes.Heads, "heads"), (EcoDiffUnitTypes.FeedForward, "ffn"), (EcoDiffUnitTypes.Channels, "channels") }
            .Where(t => (types & t.Item1) != 0).Select(t => t.Item2));

    /// <summary>Loads the model, prunes it and saves the smaller model in <see cref="PruneRequest.OutputPath"/> (written whole, then renamed into place).</summary>
    public static PruneReport Run(PruneRequest request, Device device, Action<string>? log = null, Action<EcoDiffIterationReport>? onIteration = null,
        CancellationToken cancel = default)
    {
        string output = request.OutputPath ?? throw new ArgumentException("--output is required: the folder for the pruned model.");
        CheckOutput(request.ModelPath, output);
        if (request.Prompts is not null && request.PromptEmbeddingsPath is not null)
            throw new ArgumentException(BothTexts);
        if ((request.Prompts is not null || request.PromptEmbeddingsPath is not null) && PipelineFolderOf(request) is null) // before loading: nothing else is needed to tell
            throw new ArgumentException(PromptsNeedPipeline(request.ModelPath, "not one", OptionOfText(request)));
        var watch = Stopwatch.StartNew();
        using var model = ModelFamilies.Load(request.ModelPath, device: device);
        string schedulerPath = SchedulerConfigOf(request);
        using var pruned = Prune(model, request, schedulerPath, device, log, onIteration, cancel);
        return Save(pruned, output, watch.Elapsed.TotalSeconds, cancel);
    }

    /// <summary>The scheduler config a prune of this request calibrates with: the request's, else the model folder's.</summary>
    public static string SchedulerConfigOf(PruneRequest request) =>
        request.SchedulerConfigPath ?? DiffusersModelLoader.FindSchedulerConfig(request.ModelPath)
            ?? throw new FileNotFoundException($"'{request.ModelPath}' has no scheduler_config.json; pass --scheduler-config.");

    /// <summary>
    /// Refuses, before any work, an output folder that is the source model's own folder, a file, or a non-empty folder
    /// that is not an earlier model output (its files would be replaced).
    /// </summary>
    public static void CheckOutput(string modelPath, string outputPath)
    {
        string source = Path.TrimEndingDirectorySeparator(Path.GetFullPath(Directory.Exists(modelPath) ? modelPath : Path.GetDirectoryName(Path.GetFullPath(modelPath)) ?? modelPath));
        if (string.Equals(source, Path.TrimEndingDirectorySeparator(Path.GetFullPath(outputPath)), StringComparison.Ordinal))
            throw new ArgumentException($"--output '{outputPath}' is the source model's folder; give a new folder for the pruned model.");
        AtomicFolder.Check(outputPath, "the pruned model", IsModelOutput);
    }

    /// <summary>An existing folder a prune may replace: a model or pipeline folder (an earlier output).</summary>
    private static bool IsModelOutput(string folder) =>
        File.Exists(Path.Combine(folder, ModelFolder.Config)) || File.Exists(Path.Combine(folder, ModelFolder.PruneReport))
        || File.Exists(Path.Combine(folder, ModelFolder.PipelineIndex));

    /// <summary>The Stable Diffusion pipeline folder a request prunes the U-Net of, or null when it names a model folder.</summary>
    public static string? PipelineFolderOf(PruneRequest request) =>
        Pipeline.StableDiffusion.StableDiffusionPipeline.IsStableDiffusionFolder(request.ModelPath)
            ? Pipeline.StableDiffusion.PipelineIndex.Load(request.ModelPath).Folder
            : null;

    /// <summary>
    /// The prompts a text-conditioned U-Net calibrates on (the request's, else <see cref="DefaultCalibrationPrompts"/>),
    /// encoded by its pipeline's tokenizer and text encoder; with <paramref name="negative"/> the empty prompt's states too.
    /// </summary>
    private static TextCalibration EncodeCalibrationText(DiffusionModel model, PruneRequest request, string? pipelineFolder, bool negative, Device device,
        Action<string>? log)
    {
        if (pipelineFolder is null)
            throw new ArgumentException($"{request.Method} on a {model.ClassName} calibrates on prompts, which need the text encoder: give the Stable " +
                "Diffusion pipeline folder (model_index.json) rather than its unet/ alone.");
        if (request.PromptEmbeddingsPath is { } file)
        {
            int width = model is Models.UNet2DConditionModel unet ? unet.Config.CrossAttentionDim[0]
                : throw new ArgumentException($"--prompt-embeddings calibrates a UNet2DConditionModel, not a {model.ClassName}.");
            log?.Invoke($"reading saved prompt embeddings from {file}");
            var (embeddings, labels) = Pipeline.StableDiffusion.PromptEmbeddingsFile.Load(file, width, negative, device, count =>
            {
                using var empty = Pipeline.StableDiffusion.StableDiffusionPipeline.EncodePromptsOf(pipelineFolder, Enumerable.Repeat("", count).ToArray(), false, device);
                return empty.PromptEmbeds.alias();
            });
            return new TextCalibration(labels, embeddings);
        }
        var prompts = request.Prompts ?? DefaultCalibrationPrompts;
        log?.Invoke($"encoding {prompts.Count} calibration prompts{(request.Prompts is null ? " (built-in)" : "")} with the pipeline's text encoder");
        return new TextCalibration(prompts, Pipeline.StableDiffusion.StableDiffusionPipeline.EncodePromptsOf(pipelineFolder, prompts, negative, device));
    }

    /// <summary>The report's record of the prompts a run calibrated on.</summary>
    private static void AddPromptSettings(JsonObject settings, TextCalibration? text, PruneRequest request)
    {
        if (text is null) return;
        settings["prompts"] = new JsonArray(text.Prompts.Select(p => (JsonNode?)p).ToArray());
        settings["prompt_source"] = request.PromptEmbeddingsPath is not null ? "embeddings" : request.Prompts is null ? "built-in" : "request";
        if (request.PromptEmbeddingsPath is { } file) settings["prompt_embeddings"] = Path.GetFileName(file);
    }

    /// <summary>DDIM steps per calibration latent when the request gives none (the default of <c>dprune distill --teacher-steps</c>).</summary>
    public const int DefaultTeacherSampleSteps = 25;

    /// <summary>The guidance calibration latents are sampled with when the request gives none (<c>dprune distill --teacher-guidance</c>).</summary>
    public const double DefaultTeacherGuidanceScale = 7.5;

    /// <summary>
    /// The latents per prompt a pipeline samples for taylor and learnable-depth: the request's, else just enough that
    /// <paramref name="prompts"/> x it covers the calibration count.
    /// </summary>
    public static int TeacherSamplesPerPromptOf(PruneRequest request, int prompts) =>
        request.TeacherSamplesPerPrompt ?? Math.Max(1, (Math.Max(1, request.Calibration) + prompts - 1) / prompts);

    /// <summary>
    /// The calibration images of taylor and learnable-depth on a Stable Diffusion pipeline's U-Net: the prompts encoded
    /// (with the empty prompt, for guidance) and latents the U-Net itself samples from them with deterministic DDIM
    /// (<see cref="TeacherSamples"/>, whose doc says why its own samples rather than Gaussian latents), seeded by the
    /// request's seed. The model is left as it was. The caller disposes both.
    /// </summary>
    private static (TeacherSamples Samples, TextCalibration Text) SampleCalibrationLatents(DiffusionModel model, PruneRequest request, string pipelineFolder,
        string schedulerPath, Device device, Action<string>? log, CancellationToken cancel)
    {
        var text = EncodeCalibrationText(model, request, pipelineFolder, negative: true, device, log);
        try
        {
            int perPrompt = TeacherSamplesPerPromptOf(request, text.Prompts.Count);
            int steps = request.TeacherSampleSteps ?? DefaultTeacherSampleSteps;
            double guidance = request.TeacherGuidanceScale ?? DefaultTeacherGuidanceScale;
            if (ImportanceCriteria.Find(request.Method)?.Name == "taylor" && text.Prompts.Count * perPrompt < request.Calibration)
                throw new ArgumentException($"--calibration {request.Calibration} asks for more latents than {text.Prompts.Count} prompts x --teacher-samples " +
                    $"{perPrompt} sample; raise --teacher-samples to {(request.Calibration + text.Prompts.Count - 1) / text.Prompts.Count} or lower --calibration.");
            log?.Invoke(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"sampling {perPrompt} calibration latent{(perPrompt == 1 ? "" : "s")} per prompt with the pipeline's U-Net (DDIM {steps} steps, guidance {guidance})"));
            var samples = TeacherSamples.Generate(model, text.Embeddings, text.Prompts, Schedulers.SchedulerConfig.Load(schedulerPath), perPrompt, steps, guidance,
                request.Seed, log, cancel);
            return (samples, text);
        }
        catch
        {
            text.Embeddings.Dispose();
            throw;
        }
    }

    /// <summary>The report's record of the calibration latents (the prompts are recorded beside them, by <see cref="AddPromptSettings"/>).</summary>
    private static JsonObject DescribeTeacherSamples(TeacherSamples samples)
    {
        var json = samples.ToJson(builtInPrompts: false);
        json.Remove("prompts");
        json.Remove("prompt_source");
        json["count"] = samples.Count;
        return json;
    }

    private static string PromptsNeedPipeline(string modelPath, string what, string option = "--prompts") =>
        $"{option} calibrates the U-Net of a Stable Diffusion pipeline folder (model_index.json with a text encoder); '{modelPath}' is {what}. Leave {option} out.";

    private const string BothTexts = "--prompts and --prompt-embeddings both give the calibration text; give one of them.";

    private static string OptionOfText(PruneRequest request) => request.PromptEmbeddingsPath is not null ? "--prompt-embeddings" : "--prompts";

    /// <summary>How many calibration prompts a pipeline request has: the rows of its saved embeddings, its prompts, or the built-in ones.</summary>
    public static int CalibrationPromptCount(PruneRequest request) =>
        request.PromptEmbeddingsPath is { } file ? Pipeline.StableDiffusion.PromptEmbeddingsFile.ReadHeader(file).Count
            : (request.Prompts ?? DefaultCalibrationPrompts).Count;

    /// <summary>
    /// Refuses, before any work, what a text-conditioned U-Net cannot be pruned with, and prompts given where nothing
    /// reads them. Returns whether the model is text-conditioned.
    /// </summary>
    private static bool CheckTextConditioning(DiffusionModel model, PruneRequest request, string? pipelineFolder)
    {
        bool text = ModelFamilies.ConditioningOf(model).Kind == ConditioningKind.TextStates;
        var entry = ImportanceCriteria.Find(request.Method);
        if (request.Prompts is not null && request.PromptEmbeddingsPath is not null)
            throw new ArgumentException(BothTexts);
        if (request.Prompts is not null || request.PromptEmbeddingsPath is not null)
        {
            string option = OptionOfText(request);
            if (!text || pipelineFolder is null)
                throw new ArgumentException(PromptsNeedPipeline(request.ModelPath, $"a {model.ClassName}{(text ? " folder without its pipeline's text encoder" : "")}", option));
            if (entry is null || entry.Workload == PruneWorkload.WeightsOnly)
                throw new ArgumentException($"{option} is for the methods that run the model on prompts (" +
                    $"{string.Join(", ", ImportanceCriteria.All.Where(e => e.Workload != PruneWorkload.WeightsOnly).Select(e => e.Name))}); " +
                    $"{entry?.Name ?? request.Method} does not read them. Leave {option} out.");
            if (request.PromptEmbeddingsPath is { } file) _ = Pipeline.StableDiffusion.PromptEmbeddingsFile.ReadHeader(file); // a bad file refused before any work
            else if (request.Prompts!.Count == 0 || request.Prompts.Any(string.IsNullOrWhiteSpace))
                throw new ArgumentException("--prompts holds no prompts (or an empty one): give one prompt per line.");
        }
        bool samplesLatents = text && pipelineFolder is not null && entry is { UsesImages: true };
        if (!samplesLatents && (request.TeacherSamplesPerPrompt is not null || request.TeacherSampleSteps is not null || request.TeacherGuidanceScale is not null))
            throw new ArgumentException("--teacher-samples, --teacher-steps and --teacher-guidance set the latents a Stable Diffusion pipeline samples for " +
                $"{string.Join(" and ", ImportanceCriteria.All.Where(e => e.UsesImages).Select(e => e.Name))} to calibrate on; " +
                $"{entry?.Name ?? request.Method} on '{request.ModelPath}' samples none. Leave them out.");
        if (samplesLatents)
        {
            if (request.TeacherSamplesPerPrompt is < 1) throw new ArgumentException($"--teacher-samples must be at least 1 (latents per prompt), not {request.TeacherSamplesPerPrompt}.");
            if (request.TeacherSampleSteps is < 1) throw new ArgumentException($"--teacher-steps must be at least 1 (DDIM steps per latent), not {request.TeacherSampleSteps}.");
            if (request.TeacherGuidanceScale is double g && !(g >= 1 && double.IsFinite(g)))
                throw new ArgumentException($"--teacher-guidance must be at least 1 (1: no guidance), not {g}.");
        }
        if (!text) return false;
        if (request.Data is not null)
            throw new ArgumentException($"--data is for image models; a Stable Diffusion pipeline's U-Net calibrates on latents, which {(entry is { UsesImages: true }
                ? $"{entry.Name} samples with the pipeline itself from --prompts (see --teacher-samples)" : $"{entry?.Name ?? request.Method} does not need")}. Leave --data out.");
        return true;
    }

    /// <summary>
    /// Scores <paramref name="model"/>'s units, selects the plan for the target and builds the smaller model, in memory;
    /// <paramref name="model"/> is left as it was (masks cleared). <see cref="PruneRequest.ModelPath"/> names the source in
    /// the report. Cancelling stops within one iteration (EcoDiff) or timestep (Taylor).
    /// </summary>
    public static PrunedModel Prune(DiffusionModel model, PruneRequest request, string schedulerPath, Device device, Action<string>? log = null,
        Action<EcoDiffIterationReport>? onIteration = null, CancellationToken cancel = default)
    {
        if (double.IsNaN(request.TargetParams) || request.TargetParams <= 0 || request.TargetParams >= 1)
            throw new ArgumentException($"--target-params must be strictly between 0 and 1 (got {request.TargetParams}); 0.2 removes 20% of the parameters.");
        var watch = Stopwatch.StartNew();
        string? pipelineFolder = PipelineFolderOf(request);
        bool textConditioned = CheckTextConditioning(model, request, pipelineFolder);
        var groups = PrunableGroups.Of(model);
        var before = ModelCost.Measure(model);

        bool ecodiff = request.Method.ToLowerInvariant() == "ecodiff";
        if (request.Resume && !ecodiff)
            throw new ArgumentException($"--resume continues an EcoDiff run; {request.Method} runs in one go (start it again).");
        if (ImportanceCriteria.Find(request.Method) is { RemovesLayers: true } layerMethod)
            return PruneLayers(model, request, layerMethod, schedulerPath, device, log, onIteration, cancel, watch, groups, before, pipelineFolder);
        if (request.Budget != LayerBudget.Params || request.Selection != LayerSelection.Knapsack)
            throw new ArgumentException($"--budget and --selection choose whole layers; {request.Method} narrows layers to a parameter target " +
                $"(layer methods: {string.Join(", ", ImportanceCriteria.All.Where(e => e.RemovesLayers).Select(e => e.Name))}).");
        IImportanceCriterion criterion = ecodiff ? NewEcoDiff(model, request, onIteration)
            : ImportanceCriteria.Find(request.Method)?.Name == "taylor" ? new TaylorImportance(request.Taylor)
            : ImportanceCriteria.Create(request.Method);
        // a target the scored groups cannot reach is refused now, not after the criterion's run (EcoDiff's can take an hour)
        if (criterion is EcoDiffImportance { Options.UnitTypes: var types } && types != EcoDiffUnitTypes.All)
            PlanSelector.CheckReachable(groups, groups.Units.Where(g => (types & EcoDiffObjective.UnitType(g)) != 0),
                request.TargetParams, request.MinKeepFraction, request.RoundTo, $"the unit types {UnitTypesName(types)}");
        else
            PlanSelector.CheckReachable(groups, groups.Units, request.TargetParams, request.MinKeepFraction, request.RoundTo);
        var data = OpenCalibrationData(request, model, log); // null for a pipeline (its --data is refused)
        TextCalibration? text;
        if (textConditioned && ImportanceCriteria.Find(request.Method) is { UsesImages: true })
            (data, text) = SampleCalibrationLatents(model, request, pipelineFolder!, schedulerPath, device, log, cancel);
        else
            text = textConditioned && ecodiff
                ? EncodeCalibrationText(model, request, pipelineFolder, ((EcoDiffImportance)criterion).Options.GuidanceScale > 1.0, device, log)
                : null;
        JsonNode? dataSettings = data switch { null => null, TeacherSamples teacher => DescribeTeacherSamples(teacher), _ => DescribeData(data) };
        var context = new ImportanceContext(schedulerPath, request.Steps, request.Calibration, request.Seed, device, "ddim", log, data, cancel, text);
        log?.Invoke($"scoring {groups.Units.Count} unit groups with {criterion.Name}");
        UnitScores scores;
        try
        {
            scores = criterion.Score(model, groups, context);
        }
        finally
        {
            groups.ClearMasks();
            text?.Embeddings.Dispose();
            (data as TeacherSamples)?.Dispose(); // described by dataSettings below
        }
        cancel.ThrowIfCancellationRequested();
        var selection = PlanSelector.Select(groups, scores, request.TargetParams, request.Scope, request.MinKeepFraction, request.RoundTo);

        var pruned = StructuralSurgery.Apply(model, selection.Plan);
        var after = ModelCost.Measure(pruned);
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
            ["round_to"] = request.RoundTo,
            ["scheduler_config"] = Formats.SourceIdentity.DescribeFile(schedulerPath),
        };
        if (dataSettings is not null) settings["data"] = dataSettings;
        if (criterion is EcoDiffImportance eco) AddEcoDiffSettings(settings, eco);
        if (criterion is TaylorImportance taylor)
        {
            settings["timestep_stride"] = taylor.Options.TimestepStride;
            settings["threshold"] = taylor.Options.Threshold;
            settings["timesteps_accumulated"] = taylor.LastTrace.Count(t => t.Accumulated);
        }
        AddPromptSettings(settings, text, request);
        if (pipelineFolder is not null) settings["pipeline_component"] = "unet";
        var report = new PruneReport(criterion.Name, request.TargetParams, selection.AchievedRemovedFraction, before.Parameters, after.Parameters,
            before.Macs, after.Macs, kept, watch.Elapsed.TotalSeconds, NativeMemory.PeakResidentBytes(), settings, null);
        return new PrunedModel(pruned, report, selection.Plan, schedulerPath, pipelineFolder);
    }

    /// <summary>
    /// The EcoDiff mask learning a request asks for: its options with the run's iterations, guidance and (the width
    /// form, which can resume) checkpoints.
    /// </summary>
    private static EcoDiffImportance NewEcoDiff(DiffusionModel model, PruneRequest request, Action<EcoDiffIterationReport>? onIteration, bool checkpoints = true) =>
        new(request.EcoDiff with
        {
            Iterations = request.Iterations,
            CheckpointFolder = request.OutputPath is null || !checkpoints ? null : EcoDiffCheckpoint.FolderFor(request.OutputPath),
            CheckpointEvery = request.CheckpointEvery,
            Resume = request.Resume,
            GuidanceScale = request.GuidanceIfConditional is double g
                && (model.NullClass is not null || ModelFamilies.ConditioningOf(model).Kind == ConditioningKind.TextStates) ? g : request.EcoDiff.GuidanceScale,
            TargetKeptFraction = request.SteerBetaToTarget ? 1 - request.TargetParams : request.EcoDiff.TargetKeptFraction,
        }, onIteration);

    /// <summary>Records every EcoDiff setting of a run in its report's settings.</summary>
    private static void AddEcoDiffSettings(JsonObject settings, EcoDiffImportance eco)
    {
        settings["iterations"] = eco.Options.Iterations;
        settings["learning_rate"] = eco.Options.LearningRate;
        settings["beta"] = eco.Options.Beta;
        settings["regularizer"] = eco.Options.Regularizer.ToString();
        settings["regularizer_mean"] = eco.Options.RegularizerMean.ToString().ToLowerInvariant();
        settings["parameter_weighted"] = eco.Options.ParameterWeighted;
        settings["unit_types"] = UnitTypesName(eco.Options.UnitTypes);
        settings["weight_decay"] = eco.Options.WeightDecay;
        settings["damping"] = eco.Options.Damping;
        settings["initial_logit"] = eco.Options.InitialLogit;
        settings["batch_size"] = eco.Options.BatchSize;
        settings["target_kept_fraction"] = eco.Options.TargetKeptFraction;
        settings["beta_gain"] = eco.Options.BetaGain;
        if (eco.History.Count > 0) settings["final_beta"] = eco.History[^1].Beta;
        settings["gate"] = eco.Options.GateMode.ToString();
        settings["checkpointing"] = eco.Options.Checkpointing;
        settings["guidance_scale"] = eco.Options.GuidanceScale;
    }

    /// <summary>Depth pruning: score whole layers, choose the cheapest set that meets the budget, remove them.</summary>
    private static PrunedModel PruneLayers(DiffusionModel model, PruneRequest request, ImportanceCriteria.Entry method, string schedulerPath, Device device,
        Action<string>? log, Action<EcoDiffIterationReport>? onIteration, CancellationToken cancel, Stopwatch watch, PrunableGroups groups, ModelCostReport before,
        string? pipelineFolder)
    {
        var data = OpenCalibrationData(request, model, log); // null for a pipeline (its --data is refused)
        if (request.RoundTo != 1)
            throw new ArgumentException($"--round-to rounds the widths a width method keeps; {method.Name} removes whole layers.");
        if (request.LatencyBatch < 1) throw new ArgumentException($"The latency batch must be at least 1 (got {request.LatencyBatch}).");
        ILayerCriterion criterion = method.Name switch
        {
            "laptop" => new LaptopCriterion(request.AdditivitySubsets),
            "learnable-depth" => new LearnableDepthCriterion(new LearnableDepthOptions { Iterations = request.Iterations }),
            "ecodiff-layer" => new EcoDiffLayerCriterion(NewEcoDiff(model, request, onIteration, checkpoints: false)),
            _ => ImportanceCriteria.CreateLayers(method.Name),
        };
        var costs = request.Budget switch
        {
            LayerBudget.Macs => LayerCosts.Macs(groups),
            LayerBudget.Latency => LayerCosts.Latency(groups, LatencyCacheFolder(request.ModelPath), request.LatencyBatch, log: log),
            _ => LayerCosts.Parameters(groups),
        };
        double reachable = costs.Saving.Values.Sum() / costs.Total;
        if (reachable < request.TargetParams)
            throw new ArgumentException($"Removing all {groups.Layers.Count} removable layers of this {model.ClassName} saves {reachable:P1} of its {costs.Unit}, " +
                $"less than the {request.TargetParams:P0} asked; lower the target, or use a width method (ecodiff, taylor) to reach it.");
        TextCalibration? text;
        if (pipelineFolder is not null && method.UsesImages)
            (data, text) = SampleCalibrationLatents(model, request, pipelineFolder, schedulerPath, device, log, cancel);
        else
            text = pipelineFolder is not null && method.Workload != PruneWorkload.WeightsOnly
                ? EncodeCalibrationText(model, request, pipelineFolder, criterion is EcoDiffLayerCriterion eco && eco.EcoDiff.Options.GuidanceScale > 1.0, device, log)
                : null;
        JsonNode dataSettings = data switch { null => "mnist", TeacherSamples teacher => DescribeTeacherSamples(teacher), _ => DescribeData(data) };
        var context = new ImportanceContext(schedulerPath, request.Steps, request.Calibration, request.Seed, device, "ddim", log, data, cancel, text);
        var target = new LayerTarget(costs, request.TargetParams * costs.Total);
        log?.Invoke($"scoring {groups.Layers.Count} removable layers with {criterion.Name}");
        LayerScores scores;
        IReadOnlyList<string>? oneShot = null;
        try
        {
            scores = criterion.Score(model, groups, context, target);
            if (scores.Chosen is not null)
            {
                // How the learned choice differs from the one-shot one (LAPTOP's output loss, same budget and selection).
                log?.Invoke("comparing with the one-shot choice (laptop output loss, same budget)");
                var laptop = new LaptopCriterion(additivitySubsets: 0).Score(model, groups, context with { Log = null }, target);
                oneShot = LayerSelector.Select(groups.Layers.Select(l => new LayerItem(l.Path, costs.Saving[l.Path], laptop[l.Path])).ToList(),
                    target.Needed, request.Selection).Removed;
            }
        }
        finally
        {
            groups.ClearMasks();
            text?.Embeddings.Dispose();
            (data as TeacherSamples)?.Dispose(); // described by dataSettings
        }
        cancel.ThrowIfCancellationRequested();
        var items = groups.Layers.Select(l => new LayerItem(l.Path, costs.Saving[l.Path], scores[l.Path])).ToList();
        var choice = scores.Chosen is { } chosen
            ? new LayerChoice(chosen.Order(StringComparer.Ordinal).ToArray(), chosen.Sum(p => costs.Saving[p]), chosen.Sum(p => scores[p]))
            : LayerSelector.Select(items, target.Needed, request.Selection);
        if (choice.Saving < target.Needed)
            throw new InvalidOperationException($"{criterion.Name} chose layers saving {choice.Saving:G4}, less than the {target.Needed:G4} needed.");
        var plan = new PruningPlan();
        foreach (var path in choice.Removed) plan.RemovedLayers.Add(path);
        log?.Invoke($"{criterion.Name}: removing {choice.Removed.Count} of {groups.Layers.Count} layers ({(scores.Chosen is null ? request.Selection.ToString().ToLowerInvariant() : "learned")}, " +
                    $"{choice.Saving / costs.Total:P1} of the {costs.Unit}): {string.Join(", ", choice.Removed)}");

        var pruned = StructuralSurgery.Apply(model, plan);
        var after = ModelCost.Measure(pruned);
        var kept = new SortedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var group in groups.Units) kept[group.Path] = choice.Removed.Any(group.IsWithin) ? 0.0 : 1.0;
        var settings = new JsonObject
        {
            ["model"] = Formats.SourceIdentity.Describe(request.ModelPath),
            ["steps"] = request.Steps,
            ["calibration"] = request.Calibration,
            ["seed"] = request.Seed,
            ["budget"] = request.Budget.ToString().ToLowerInvariant(),
            ["selection"] = request.Selection.ToString().ToLowerInvariant(),
            ["scheduler_config"] = Formats.SourceIdentity.DescribeFile(schedulerPath),
        };
        if (criterion is LaptopCriterion laptopCriterion) settings["additivity_subsets"] = laptopCriterion.AdditivitySubsets;
        if (criterion is EcoDiffLayerCriterion ecoLayers) AddEcoDiffSettings(settings, ecoLayers.EcoDiff);
        if (criterion is LearnableDepthCriterion learnable)
        {
            settings["iterations"] = learnable.Options.Iterations;
            settings["batch_size"] = learnable.Options.BatchSize;
            settings["weight_learning_rate"] = learnable.Options.WeightLearningRate;
            settings["mask_learning_rate"] = learnable.Options.MaskLearningRate;
            settings["temperature"] = $"{learnable.Options.StartTemperature} -> {learnable.Options.EndTemperature}";
            settings["data"] = dataSettings;
            if (learnable.LossHistory.Count > 0) settings["final_loss"] = Math.Round(learnable.LossHistory.TakeLast(10).Average(), 6);
        }
        if (request.Budget == LayerBudget.Latency) settings["latency_batch"] = request.LatencyBatch;
        AddPromptSettings(settings, text, request);
        if (pipelineFolder is not null) settings["pipeline_component"] = "unet";
        var summary = new LayerPruneSummary(request.Budget, request.Selection, costs.Unit, costs.Total, request.TargetParams, choice.Saving / costs.Total,
            choice.Removed, scores.ByLayer, costs.Saving, scores.Additivity, costs.Source)
        {
            OneShotRemoved = oneShot,
            LearnedSets = scores.LearnedSets,
        };
        double achievedParams = (before.Parameters - after.Parameters) / (double)before.Parameters;
        var report = new PruneReport(criterion.Name, request.TargetParams, achievedParams, before.Parameters, after.Parameters, before.Macs, after.Macs,
            kept, watch.Elapsed.TotalSeconds, NativeMemory.PeakResidentBytes(), settings, null, summary);
        return new PrunedModel(pruned, report, plan, schedulerPath, pipelineFolder);
    }

    /// <summary>The request's calibration images (<c>--data</c>), or null; refused for methods that do not calibrate on images.</summary>
    private static Data.IImageDataset? OpenCalibrationData(PruneRequest request, DiffusionModel model, Action<string>? log)
    {
        if (request.Data is null) return null;
        if (ImportanceCriteria.Find(request.Method) is not { UsesImages: true })
            throw new ArgumentException($"--data is for methods that calibrate on images ({string.Join(", ", ImportanceCriteria.All.Where(e => e.UsesImages).Select(e => e.Name))}); " +
                $"{ImportanceCriteria.Find(request.Method)?.Name ?? request.Method} is data-free.");
        var data = Data.ImageDatasets.Open(request.Data, model.InChannels, model.SampleSize[0], model.SampleSize[^1]);
        log?.Invoke($"calibration data: {data.Name}");
        return data;
    }

    /// <summary>The calibration data as the report names it: never a local path.</summary>
    private static string DescribeData(Data.IImageDataset data) => data is Data.ImageFolderDataset folder
        ? $"image folder ({folder.Count} images{(folder.NumClasses is int c ? $", {c} classes" : "")})"
        : data.Name;

    /// <summary>The model's folder (a Stable Diffusion pipeline's unet/), where the latency table is cached.</summary>
    private static string? LatencyCacheFolder(string modelPath) =>
        Pipeline.StableDiffusion.StableDiffusionPipeline.IsStableDiffusionFolder(modelPath) ? Path.Combine(Pipeline.StableDiffusion.PipelineIndex.Load(modelPath).Folder, "unet")
        : Directory.Exists(modelPath) ? modelPath : File.Exists(modelPath) ? Path.GetDirectoryName(Path.GetFullPath(modelPath)) : null;

    /// <summary>
    /// Writes the pruned model (diffusers layout), its plan, its report and the scheduler config it was calibrated with
    /// into <paramref name="outputPath"/>: into a sibling first, renamed into place when whole. An existing folder is
    /// replaced only if it is a model folder (an earlier output). Returns the report as written.
    /// A pipeline's pruned U-Net is written as a copy of the whole pipeline instead (<see cref="WritePipeline"/>).
    /// </summary>
    /// <param name="seconds">The whole run's time for the report (load, score, surgery, save); null keeps the prune's own.</param>
    public static PruneReport Save(PrunedModel pruned, string outputPath, double? seconds = null, CancellationToken cancel = default)
    {
        PruneReport report = pruned.Report with { OutputPath = outputPath };
        AtomicFolder.Write(outputPath, pruned.SourcePipeline is null ? "the pruned model" : "the pruned pipeline", IsModelOutput,
            folder =>
            {
                if (pruned.SourcePipeline is { } source)
                    WritePipeline(pruned, source, folder);
                else
                {
                    DiffusersModelLoader.Save(pruned.Model, folder, new Dictionary<string, string> { ["dprune_method"] = pruned.Report.Method });
                    File.Copy(pruned.SchedulerConfigPath, Path.Combine(folder, ModelFolder.SchedulerConfig), overwrite: true);
                }
                pruned.Plan.Save(Path.Combine(folder, ModelFolder.PrunePlan));
                report = report with { Seconds = seconds ?? report.Seconds, PeakResidentBytes = NativeMemory.PeakResidentBytes() };
                Formats.ReportJson.Write(Path.Combine(folder, ModelFolder.PruneReport), report.ToJson());
            }, cancel);
        string checkpoint = EcoDiffCheckpoint.FolderFor(outputPath);
        if (Directory.Exists(checkpoint)) Directory.Delete(checkpoint, recursive: true); // the run is done: nothing left to resume
        return report;
    }

    /// <summary>
    /// A pruned Stable Diffusion pipeline: every entry of the source folder but <c>unet/</c> hard-linked where the file
    /// system allows (else copied), so tokenizer, text encoder, VAE, scheduler and model_index.json cost no disk; then
    /// <c>unet/</c> written from the pruned U-Net (config.json with its kept structure + safetensors). The plan and report
    /// go at the pipeline root (by <see cref="Save"/>), not in unet/: the report describes the whole run (its prompts and
    /// guidance, the pipeline it came from), every tool looks for prune_report.json in the --output folder, and unet/ stays
    /// exactly a diffusers component folder. A source that was itself a pruned pipeline does not pass its plan and report on,
    /// nor does any source its evaluation report (it measured another U-Net).
    /// </summary>
    private static void WritePipeline(PrunedModel pruned, string source, string folder)
    {
        foreach (var entry in Directory.EnumerateFileSystemEntries(source))
        {
            string name = Path.GetFileName(entry);
            if (name is "unet" or ModelFolder.PruneReport or ModelFolder.PrunePlan or ModelFolder.EvalReport || name.StartsWith('.')) continue;
            if (Directory.Exists(entry)) FileLinks.LinkOrCopyFolder(entry, Path.Combine(folder, name));
            else FileLinks.LinkOrCopy(entry, Path.Combine(folder, name));
        }
        DiffusersModelLoader.Save(pruned.Model, Path.Combine(folder, "unet"), new Dictionary<string, string> { ["dprune_method"] = pruned.Report.Method });
    }
}

/// <summary>
/// A pruned model in memory: the smaller model (owned: disposing this disposes it), its report and plan, the scheduler
/// config it was calibrated with, and, when it is a Stable Diffusion pipeline's U-Net, the pipeline folder it came from
/// (<see cref="PruneRunner.Save"/> then writes a copy of the whole pipeline around it).
/// </summary>
public sealed record PrunedModel(DiffusionModel Model, PruneReport Report, PruningPlan Plan, string SchedulerConfigPath, string? SourcePipeline = null) : IDisposable
{
    public void Dispose() => Model.Dispose();
}
