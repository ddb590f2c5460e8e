using System.CommandLine;
using DiffusionPrune.Cli.Benchmarks;
using DiffusionPrune.Formats;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Importance;

namespace DiffusionPrune.Cli.Commands;

/// <summary>
/// <c>dprune prune --model DIR --method ecodiff|magnitude|random|taylor|laptop|ldpruner|learnable-depth|ecodiff-layer|random-layer --target-params 0.2 [--budget params|macs|latency]
/// --steps 10 --iterations N --calibration K [--prompts FILE for a Stable Diffusion pipeline] --output DIR</c>.
/// On a pipeline, taylor and learnable-depth calibrate on latents the pipeline samples from the prompts
/// (<c>--teacher-samples</c>, <c>--teacher-steps</c>, <c>--teacher-guidance</c>, named as in <c>dprune distill</c>).
/// </summary>
public static class PruneCommand
{
    public static Command Create()
    {
        var model = CliCommon.ModelOption();
        var method = new Option<string>("--method")
        {
            Description = string.Join("; ", ImportanceCriteria.All.Select(m => $"{m.Name}: {m.Description}")) + ".",
            DefaultValueFactory = _ => "ecodiff",
        };
        var target = new Option<double?>("--target-params") { Description = "Fraction to remove, e.g. 0.2: of the parameters, or for layer methods of the --budget (required unless --probe-memory)." };
        var budget = new Option<string>("--budget") { Description = "Layer methods: what the target measures: params | macs | latency (a per-layer latency table measured here, cached beside the model).", DefaultValueFactory = _ => "params" };
        var selection = new Option<string>("--selection") { Description = "Layer methods: knapsack (least total score meeting the budget) | greedy (score per cost, the baseline).", DefaultValueFactory = _ => "knapsack" };
        var additivity = new Option<int>("--additivity-subsets") { Description = "laptop: random layer subsets whose measured loss is compared with the sum of single-layer losses.", DefaultValueFactory = _ => 20 };
        var latencyBatch = new Option<int>("--latency-batch") { Description = "Layer methods with --budget latency: the batch size the latency table is measured at.", DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "Sampling steps of the calibration trajectories (EcoDiff).", DefaultValueFactory = _ => 10 };
        var iterations = new Option<int>("--iterations") { Description = "EcoDiff mask-optimisation iterations; learnable-depth joint mask and weight updates.", DefaultValueFactory = _ => 100 };
        var calibration = new Option<int>("--calibration") { Description = "Calibration samples (noise seeds / images).", DefaultValueFactory = _ => 16 };
        var beta = new Option<double>("--beta") { Description = "EcoDiff sparsity weight (0.5, chosen from the ablation in docs/BENCHMARKS.md; the official code uses 0.5-1).", DefaultValueFactory = _ => new EcoDiffOptions().Beta };
        var lr = new Option<double>("--lr") { Description = "EcoDiff logit learning rate.", DefaultValueFactory = _ => 0.1 };
        var regularizer = new Option<string>("--regularizer") { Description = "l0 | l1.", DefaultValueFactory = _ => "l0" };
        var weighting = new Option<string>("--regularizer-weighting") { Description = "parameters (each unit weighs its parameter count) | units (as the paper).", DefaultValueFactory = _ => "parameters" };
        var betaControl = new Option<string>("--beta-control") { Description = "target (steer beta until the expected kept fraction meets the target) | fixed (as the paper; default).", DefaultValueFactory = _ => "fixed" };
        var gate = new Option<string>("--gate") { Description = "hard-concrete | sigmoid.", DefaultValueFactory = _ => "hard-concrete" };
        var noCheckpointing = new Option<bool>("--no-checkpointing") { Description = "Keep the whole trajectory's graph (for comparison; memory grows with steps)." };
        var roundTo = new Option<int>("--round-to") { Description = "Width methods: round kept ResNet channels and feed-forward neurons to multiples of this, e.g. 8 (1: any width).", DefaultValueFactory = _ => 1 };
        var scope = new Option<string>("--scope", "--binarize") { Description = "How scores become a plan: global (one ranking across layers and unit types) | per-layer (every layer loses the same fraction of its units) | per-type (every unit type loses the same fraction of its units, ranked across layers within the type: the official EcoDiff binarisation).", DefaultValueFactory = _ => "global" };
        var minKeep = new Option<double>("--min-keep") { Description = "Width methods: the fraction of each layer's units that always stays, e.g. 0.1.", DefaultValueFactory = _ => 0.1 };
        var unitTypes = new Option<string>("--unit-types") { Description = "EcoDiff: the unit kinds that get gates, a comma list of heads, ffn, channels (the official code: heads,ffn).", DefaultValueFactory = _ => "heads,ffn,channels" };
        var regularizerMean = new Option<string>("--regularizer-mean") { Description = "EcoDiff: units (the regulariser averaged over all gated units, ours) | layers (per layer, then over each unit type's layers, summed over types: the official code).", DefaultValueFactory = _ => "units" };
        var weightDecay = new Option<double>("--weight-decay") { Description = "EcoDiff: AdamW weight decay of the logits (the official code: 0.01).", DefaultValueFactory = _ => 0.0 };
        var damping = new Option<double>("--damping") { Description = "EcoDiff: hard-concrete noise damping (the official code: 0.5 for SDXL/SD2).", DefaultValueFactory = _ => HardConcreteGate.DefaultDamping };
        var initialLogit = new Option<double>("--initial-logit") { Description = "EcoDiff: the logit every gate starts at (3: nearly open).", DefaultValueFactory = _ => 3.0 };
        var ecoBatch = new Option<int>("--ecodiff-batch") { Description = "EcoDiff: calibration samples per iteration (the calibration set is cycled in batches of this size).", DefaultValueFactory = _ => 4 };
        var guidance = new Option<double>("--guidance-scale") { Description = "Classifier-free guidance of EcoDiff's calibration trajectories (class-conditional models, or a Stable Diffusion pipeline against the empty prompt; use the scale you will sample with, e.g. 7.5).", DefaultValueFactory = _ => 1.0 };
        var prompts = new Option<string?>("--prompts") { Description = "A Stable Diffusion pipeline folder: a text file of calibration prompts, one per line (blank lines skipped; default: eight built-in generic prompts), for every method that runs the model; taylor and learnable-depth calibrate on the pipeline's own samples from them." };
        var promptEmbeddings = new Option<string?>("--prompt-embeddings") { Description = "A Stable Diffusion pipeline folder: saved prompt embeddings to calibrate on instead of --prompts: a safetensors file with diffusers' prompt_embeds [prompts, tokens, width] and optionally negative_prompt_embeds of the same shape (else the empty prompt is encoded), one calibration prompt per row." };
        var teacherSamples = new Option<int?>("--teacher-samples") { Description = "taylor and learnable-depth on a Stable Diffusion pipeline: calibration latents the pipeline samples per prompt (default: enough for --calibration, ceil(calibration / prompts))." };
        var teacherSteps = new Option<int?>("--teacher-steps") { Description = $"taylor and learnable-depth on a Stable Diffusion pipeline: DDIM steps per calibration latent (default {PruneRunner.DefaultTeacherSampleSteps})." };
        var teacherGuidance = new Option<double?>("--teacher-guidance") { Description = $"taylor and learnable-depth on a Stable Diffusion pipeline: the classifier-free guidance the calibration latents are sampled with (default {PruneRunner.DefaultTeacherGuidanceScale.ToString(System.Globalization.CultureInfo.InvariantCulture)})." };
        var data = new Option<string?>("--data") { Description = "Calibration images for taylor and learnable-depth: mnist (default), an mnist.bin.gz file, or a folder of PNG/JPEG images (class subfolders 0/, 1/, ... for class-conditional models), resized to the model's size. Not for Stable Diffusion pipelines (they sample their own from --prompts)." };
        var schedulerConfig = new Option<string?>("--scheduler-config") { Description = "scheduler_config.json (default: the model's own)." };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 0 };
        var output = new Option<string?>("--output") { Description = "Folder for the pruned model (diffusers layout + prune_report.json); required unless --probe-memory." };
        var resume = new Option<bool>("--resume") { Description = "EcoDiff: continue a run into the same --output that was stopped (Ctrl+C, kill, crash) from its last checkpoint; the scores equal an uninterrupted run's." };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "EcoDiff: iterations between checkpoints (kept beside --output until the model is written).", DefaultValueFactory = _ => 10 };
        var probeMemory = new Option<bool>("--probe-memory") { Description = "Benchmark: run one EcoDiff iteration at --steps and print peak RSS and time (see benchmarks/ecodiff-memory.sh)." };
        var estimate = new Option<bool>("--estimate") { Description = "Print how long the run would take (its network passes, each kind timed here) and the memory it needs, then exit without pruning." };
        var device = CliCommon.DeviceOption();
        var quiet = CliOutput.QuietOption();
        var json = CliOutput.JsonOption();
        var command = new Command("prune", "Prune a model structurally to a parameter target and save the smaller model.")
        {
            model, method, target, budget, selection, additivity, latencyBatch, steps, iterations, calibration, beta, lr, regularizer, weighting, betaControl, gate, noCheckpointing, roundTo, scope, minKeep, unitTypes, regularizerMean, weightDecay, damping, initialLogit, ecoBatch, guidance, prompts, promptEmbeddings, teacherSamples, teacherSteps, teacherGuidance, data, schedulerConfig, seed, output, resume, checkpointEvery, probeMemory, estimate, device,
            quiet, json,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            if (parse.GetValue(probeMemory))
            {
                EcoDiffMemoryProbe.Run(parse.GetValue(model)!, parse.GetValue(steps), !parse.GetValue(noCheckpointing), parse.GetValue(schedulerConfig));
                return 0;
            }
            double targetParams = parse.GetValue(target) ?? throw new ArgumentException("--target-params is required, e.g. --target-params 0.2 to remove 20% of the parameters.");
            bool estimateOnly = parse.GetValue(estimate);
            string? outputPath = parse.GetValue(output) ?? (estimateOnly ? null : throw new ArgumentException("--output is required: the folder for the pruned model."));
            var request = new PruneRequest
            {
                ModelPath = parse.GetValue(model)!,
                Method = parse.GetValue(method)!,
                TargetParams = targetParams,
                OutputPath = outputPath,
                SchedulerConfigPath = parse.GetValue(schedulerConfig),
                Data = parse.GetValue(data),
                Prompts = parse.GetValue(prompts) is { } promptFile ? ReadPrompts(promptFile) : null,
                PromptEmbeddingsPath = parse.GetValue(promptEmbeddings),
                TeacherSamplesPerPrompt = parse.GetValue(teacherSamples),
                TeacherSampleSteps = parse.GetValue(teacherSteps),
                TeacherGuidanceScale = parse.GetValue(teacherGuidance),
                Steps = parse.GetValue(steps),
                Iterations = parse.GetValue(iterations),
                Calibration = parse.GetValue(calibration),
                Seed = parse.GetValue(seed),
                Resume = parse.GetValue(resume),
                CheckpointEvery = parse.GetValue(checkpointEvery),
                Budget = parse.GetValue(budget) switch
                {
                    "params" => Pruning.Layers.LayerBudget.Params,
                    "macs" => Pruning.Layers.LayerBudget.Macs,
                    "latency" => Pruning.Layers.LayerBudget.Latency,
                    var other => throw new ArgumentException($"--budget must be params, macs or latency, not '{other}'."),
                },
                Selection = parse.GetValue(selection) switch
                {
                    "knapsack" => Pruning.Layers.LayerSelection.Knapsack,
                    "greedy" => Pruning.Layers.LayerSelection.Greedy,
                    var other => throw new ArgumentException($"--selection must be knapsack or greedy, not '{other}'."),
                },
                AdditivitySubsets = parse.GetValue(additivity),
                RoundTo = parse.GetValue(roundTo),
                LatencyBatch = parse.GetValue(latencyBatch),
                Scope = parse.GetValue(scope) switch
                {
                    "global" => SelectionScope.Global,
                    "per-layer" => SelectionScope.PerLayer,
                    "per-type" => SelectionScope.PerType,
                    var other => throw new ArgumentException($"--scope must be global, per-layer or per-type, not '{other}'."),
                },
                MinKeepFraction = parse.GetValue(minKeep),
                SteerBetaToTarget = parse.GetValue(betaControl) switch
                {
                    "target" => true,
                    "fixed" => false,
                    var other => throw new ArgumentException($"--beta-control must be target or fixed, not '{other}'."),
                },
                EcoDiff = new EcoDiffOptions
                {
                    Beta = parse.GetValue(beta),
                    LearningRate = parse.GetValue(lr),
                    Regularizer = parse.GetValue(regularizer) switch
                    {
                        "l0" => SparsityRegularizer.L0,
                        "l1" => SparsityRegularizer.L1,
                        var other => throw new ArgumentException($"--regularizer must be l0 or l1, not '{other}'."),
                    },
                    ParameterWeighted = parse.GetValue(weighting) switch
                    {
                        "parameters" => true,
                        "units" => false,
                        var other => throw new ArgumentException($"--regularizer-weighting must be parameters or units, not '{other}'."),
                    },
                    GateMode = parse.GetValue(gate) switch
                    {
                        "hard-concrete" => GateMode.HardConcrete,
                        "sigmoid" => GateMode.Sigmoid,
                        var other => throw new ArgumentException($"--gate must be hard-concrete or sigmoid, not '{other}'."),
                    },
                    Checkpointing = !parse.GetValue(noCheckpointing),
                    GuidanceScale = parse.GetValue(guidance),
                    UnitTypes = ParseUnitTypes(parse.GetValue(unitTypes)!),
                    RegularizerMean = parse.GetValue(regularizerMean) switch
                    {
                        "units" => RegularizerMean.Units,
                        "layers" => RegularizerMean.Layers,
                        var other => throw new ArgumentException($"--regularizer-mean must be units or layers, not '{other}'."),
                    },
                    WeightDecay = parse.GetValue(weightDecay),
                    Damping = parse.GetValue(damping),
                    InitialLogit = parse.GetValue(initialLogit),
                    BatchSize = parse.GetValue(ecoBatch),
                },
            };
            var dev = CliCommon.ResolveDevice(parse.GetValue(device)!);
            var console = CliOutput.From(parse, quiet, json);
            if (estimateOnly)
            {
                using var loaded = Families.ModelFamilies.Load(request.ModelPath, device: dev);
                var time = PruneTime.Estimate(loaded, request, kind => PruneTime.Measure(loaded, kind));
                var memory = PruneRunner.MemoryNeed(Families.ModelFamilies.EstimateFolder(request.ModelPath), request);
                console.Result($"{request.Method}: {time.Describe()}. Memory for {memory.Workload}: {memory.Describe()}.");
                console.Summary(new System.Text.Json.Nodes.JsonObject
                    {
                        ["method"] = request.Method,
                        ["estimated_seconds"] = Math.Round(time.Total.TotalSeconds, 1),
                        ["estimated_memory_bytes"] = memory.TotalBytes,
                        ["cpu"] = time.Cpu,
                        ["threads"] = time.Threads,
                    });
                return 0;
            }
            using var pipeline = new DiffusionPipeline(dev);
            var report = console.Track(progress => pipeline.PruneAsync(request, progress, CliCommon.Interrupt), _ => "iteration", detail: true).Report;
            console.EndProgress();
            string targetText = report.Layers is { Budget: not Pruning.Layers.LayerBudget.Params } l ? $"target {report.TargetParams:P0} of the {l.Unit}" : $"target {report.TargetParams:P0}";
            console.Result($"{report.Method}: removed {report.AchievedParams:P1} of parameters ({targetText}): " +
                $"{report.ParametersBefore:N0} -> {report.ParametersAfter:N0}; MACs {report.MacsBefore:N0} -> {report.MacsAfter:N0}; {report.Seconds:F1} s");
            if (report.Layers is { } layers)
            {
                console.Result($"removed {layers.Removed.Count} layer{(layers.Removed.Count == 1 ? "" : "s")} ({layers.SelectionName}, {layers.AchievedFraction:P1} of the {layers.Unit}): {string.Join(", ", layers.Removed)}");
                if (layers.OneShotRemoved is { } oneShot)
                    console.Result(layers.SameAsOneShot == true
                        ? "the one-shot choice (laptop, same budget) removes the same layers"
                        : $"the one-shot choice (laptop, same budget) would remove: {string.Join(", ", oneShot)}");
                if (layers.Additivity is { } check)
                    console.Result(check.PearsonR is double r
                        ? $"additivity: Pearson r = {r:F3}, Spearman rho = {check.SpearmanRho:F3} over {check.Samples.Count} random layer subsets (sum of single-layer losses vs measured)"
                        : $"additivity: not measured ({check.Samples.Count} subsets)");
            }
            console.Result($"wrote {report.OutputPath} ({ModelFolder.PruneReport})");
            var summary = report.ToJson();
            summary["output_path"] = Path.GetFullPath(outputPath!); // for the script on this machine; the report file keeps the name only
            console.Summary(summary);
            return 0;
        }));
        return command;
    }

    /// <summary>"heads,ffn" as <see cref="EcoDiffUnitTypes"/>; an unknown name is refused with the known ones.</summary>
    public static EcoDiffUnitTypes ParseUnitTypes(string text)
    {
        var types = (EcoDiffUnitTypes)0;
        foreach (var name in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            types |= name.ToLowerInvariant() switch
            {
                "heads" => EcoDiffUnitTypes.Heads,
                "ffn" => EcoDiffUnitTypes.FeedForward,
                "channels" => EcoDiffUnitTypes.Channels,
                _ => throw new ArgumentException($"--unit-types takes heads, ffn and/or channels, not '{name}'."),
            };
        return types == 0 ? throw new ArgumentException("--unit-types needs at least one of heads, ffn, channels.") : types;
    }

    /// <summary>The prompts of a --prompts file: one per line, trimmed, blank lines skipped; a missing or empty file is refused.</summary>
    internal static IReadOnlyList<string> ReadPrompts(string file)
    {
        if (!File.Exists(file))
            throw new FileNotFoundException($"--prompts '{file}' does not exist; give a text file with one prompt per line.", file);
        var lines = File.ReadAllLines(file).Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();
        if (lines.Length == 0)
            throw new ArgumentException($"--prompts '{file}' holds no prompts; give one prompt per line.");
        return lines;
    }
}
