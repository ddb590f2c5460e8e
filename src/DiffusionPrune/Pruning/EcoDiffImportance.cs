using System.Diagnostics;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using DiffusionPrune.Training;
using TorchSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>The kinds of units EcoDiff puts gates on.</summary>
[Flags]
public enum EcoDiffUnitTypes
{
    /// <summary>Inner channels of ResNet blocks (our extension: the official code never masks conv channels).</summary>
    Channels = 1,

    /// <summary>Attention heads (before <c>to_out</c>).</summary>
    Heads = 2,

    /// <summary>Feed-forward hidden neurons.</summary>
    FeedForward = 4,

    /// <summary>Every kind (ours).</summary>
    All = Channels | Heads | FeedForward,
}

/// <summary>How the sparsity term averages its per-unit regulariser.</summary>
public enum RegularizerMean
{
    /// <summary>Over all gated units at once, each weighing 1 or its parameters (<see cref="EcoDiffOptions.ParameterWeighted"/>; ours).</summary>
    Units,

    /// <summary>
    /// Over each layer's units, then over the layers of each unit type, summed over the types (the official code's
    /// attention and FFN terms): every layer counts the same, whatever its width; no parameter weighting.
    /// </summary>
    Layers,
}

/// <summary>EcoDiff mask-optimisation settings (arXiv 2412.02852).</summary>
public sealed record EcoDiffOptions
{
    /// <summary>Optimisation iterations; each runs one calibration batch through the whole sampler. Default 100.</summary>
    public int Iterations { get; init; } = 100;

    /// <summary>AdamW learning rate of the logits (no weight decay). Default 0.1: a logit moves about 0.1 per iteration.</summary>
    public double LearningRate { get; init; } = 0.1;

    /// <summary>
    /// Weight of the sparsity term. R is averaged over all units, so the weight does not depend on model size. Default
    /// 0.5, the official code's lower end: chosen over 0.1 from the ablation in docs/BENCHMARKS.md (far better on the
    /// DiT at 10-30%, better on the U-Net at 20% and a tie at 30%; then tested unchanged on a held-out U-Net).
    /// </summary>
    public double Beta { get; init; } = 0.5;

    public SparsityRegularizer Regularizer { get; init; } = SparsityRegularizer.L0;

    /// <summary>How the regulariser is averaged: over all units (ours) or per layer and type (the official code). Default units.</summary>
    public RegularizerMean RegularizerMean { get; init; } = RegularizerMean.Units;

    /// <summary>The unit kinds that get gates; the others stay whole. Default all (the official code: heads and feed-forward).</summary>
    public EcoDiffUnitTypes UnitTypes { get; init; } = EcoDiffUnitTypes.All;

    /// <summary>Decoupled AdamW weight decay of the logits (the official code: 0.01). Default 0.</summary>
    public double WeightDecay { get; init; }

    /// <summary>
    /// Weight each unit's share of R by the parameters it carries (R = expected kept fraction of the prunable
    /// parameters), so the penalty is in the same currency as the parameter target: a 128-channel ResNet channel
    /// costs several times a 16-channel one. Off: every unit weighs the same, as in the paper. Default on.
    /// </summary>
    public bool ParameterWeighted { get; init; } = true;
    public GateMode GateMode { get; init; } = GateMode.HardConcrete;

    /// <summary>
    /// Expected fraction of the model's parameters to keep, or null for a fixed beta (the paper). When set, beta
    /// is steered after every iteration, beta ← beta · exp(<see cref="BetaGain"/> · (kept − target)), so the
    /// expected kept fraction settles at the target and the later iterations train the masks at the sparsity the
    /// model will be cut to, instead of ranking units by how far they drifted from all-open.
    /// </summary>
    public double? TargetKeptFraction { get; init; }

    /// <summary>Gain of the beta controller (see <see cref="TargetKeptFraction"/>). Default 10: 10% too many kept parameters multiply beta by e per iteration.</summary>
    public double BetaGain { get; init; } = 10.0;

    /// <summary>Initial logit of every unit: high, so every gate starts (nearly) open. Default 3.</summary>
    public double InitialLogit { get; init; } = 3.0;

    /// <summary>Hard-concrete noise damping d (see <see cref="HardConcreteGate"/>). Default 0.3.</summary>
    public double Damping { get; init; } = HardConcreteGate.DefaultDamping;

    /// <summary>Time-step gradient checkpointing: activation memory of one step instead of the whole trajectory. Default on.</summary>
    public bool Checkpointing { get; init; } = true;

    /// <summary>Classifier-free guidance weight of the calibration trajectories (models with a null class only). Default 1 (none).</summary>
    public double GuidanceScale { get; init; } = 1.0;

    /// <summary>Calibration samples per iteration; the calibration set is cycled in batches of this size. Default 4.</summary>
    public int BatchSize { get; init; } = 4;

    /// <summary>Seed of the calibration noise, labels and gate noise; null takes <see cref="ImportanceContext.Seed"/>.</summary>
    public long? Seed { get; init; }

    /// <summary>
    /// Folder for a checkpoint every <see cref="CheckpointEvery"/> iterations (logits, optimizer moments, gate-noise
    /// generator, beta, history), written whole; null writes none. With <see cref="Resume"/> a run continues from it and
    /// ends with the scores the uninterrupted run would have given.
    /// </summary>
    public string? CheckpointFolder { get; init; }

    /// <summary>Iterations between checkpoints. Default 10.</summary>
    public int CheckpointEvery { get; init; } = 10;

    /// <summary>Continue from the checkpoint in <see cref="CheckpointFolder"/>.</summary>
    public bool Resume { get; init; }

    public void Validate()
    {
        if (Iterations < 1) throw new ArgumentException($"EcoDiff needs at least one iteration (got {Iterations}).");
        if (!(LearningRate > 0) || !double.IsFinite(LearningRate)) throw new ArgumentException($"The EcoDiff learning rate must be a positive number (got {LearningRate}).");
        if (!(Beta >= 0) || !double.IsFinite(Beta)) throw new ArgumentException($"The EcoDiff regulariser weight beta must be >= 0 (got {Beta}).");
        if (BatchSize < 1) throw new ArgumentException($"The EcoDiff calibration batch size must be at least 1 (got {BatchSize}).");
        if (TargetKeptFraction is double kept && !(kept > 0 && kept < 1))
            throw new ArgumentException($"The EcoDiff target kept fraction must lie strictly between 0 and 1 (got {kept}).");
        if (!(BetaGain > 0) || !double.IsFinite(BetaGain)) throw new ArgumentException($"The beta gain must be a positive number (got {BetaGain}).");
        if (!double.IsFinite(InitialLogit)) throw new ArgumentException("The initial logit must be finite.");
        if ((UnitTypes & EcoDiffUnitTypes.All) == 0 || (UnitTypes & ~EcoDiffUnitTypes.All) != 0)
            throw new ArgumentException("EcoDiff needs at least one unit type to gate: heads, ffn and/or channels.");
        if (!(WeightDecay >= 0) || !double.IsFinite(WeightDecay)) throw new ArgumentException($"The logits' weight decay must be >= 0 (got {WeightDecay}).");
        if (!(GuidanceScale >= 0) || !double.IsFinite(GuidanceScale)) throw new ArgumentException($"The guidance scale must be >= 0 (got {GuidanceScale}).");
        if (CheckpointEvery < 1) throw new ArgumentException($"--checkpoint-every must be at least 1 (got {CheckpointEvery}).");
        if (Resume && CheckpointFolder is null) throw new ArgumentException("--resume needs a checkpoint folder (give the --output of the run to resume).");
    }
}

/// <summary>What one EcoDiff iteration reports.</summary>
/// <param name="Loss">Reconstruction + beta · regulariser.</param>
/// <param name="Reconstruction">MSE between the masked and the original model's final latents.</param>
/// <param name="Regularizer">R averaged over units, parameter-weighted by default (before the beta weight).</param>
/// <param name="ExpectedKeptFraction">Expected fraction of the model's parameters kept: 1 − sum P(gate = 0)·parameters per unit / total.</param>
/// <param name="Seconds">Wall time of the iteration.</param>
/// <param name="PeakResidentBytes">Peak RSS of the process so far (VmHWM), null where /proc is absent.</param>
/// <param name="Beta">The regulariser weight used in this iteration (steered when a target kept fraction is set).</param>
public sealed record EcoDiffIterationReport(
    int Iteration, double Loss, double Reconstruction, double Regularizer, double ExpectedKeptFraction, double Seconds, long? PeakResidentBytes,
    double Beta);

/// <summary>One evaluation of the objective: the loss and its two parts.</summary>
public sealed record EcoDiffLoss(double Loss, double Reconstruction, double Regularizer);

/// <summary>
/// EcoDiff as an importance criterion: learns one logit per unit (ResNet channel, attention head, feed-forward
/// neuron) so that the masked model's sampling trajectory ends where the original's does, under a sparsity
/// penalty, with the model's weights frozen. <see cref="Score"/> returns the final logits (higher = keep);
/// <see cref="PlanSelector"/> binarises them to a parameter budget.
/// </summary>
public sealed class EcoDiffImportance : IImportanceCriterion
{
    private readonly List<EcoDiffIterationReport> _history = [];

    /// <param name="onIteration">Called after every iteration (progress, logging).</param>
    public EcoDiffImportance(EcoDiffOptions? options = null, Action<EcoDiffIterationReport>? onIteration = null)
    {
        Options = options ?? new EcoDiffOptions();
        Options.Validate();
        OnIteration = onIteration;
    }

    public string Name => "ecodiff";
    public EcoDiffOptions Options { get; }
    public Action<EcoDiffIterationReport>? OnIteration { get; }

    /// <summary>The reports of the last <see cref="Score"/> call.</summary>
    public IReadOnlyList<EcoDiffIterationReport> History => _history;

    public UnitScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        Runtime.NumericsGuard.RequireHealthy();
        _history.Clear();
        using var scheduler = Scheduler.FromFile(context.SchedulerConfigPath, context.SchedulerName ?? "ddim");
        long seed = Options.Seed ?? context.Seed;
        using var objective = new EcoDiffObjective(model, groups, scheduler, context.Steps, context.CalibrationSamples, Options, seed, context.CalibrationText);
        using var optimizer = new Training.AdamW(objective.NamedParameters()) { WeightDecay = Options.WeightDecay };
        context.Log?.Invoke($"ecodiff: {objective.Gates.Count} unit groups, {objective.Gates.Sum(g => g.Gate.Units)} units, " +
                            $"{context.CalibrationSamples} calibration samples in {objective.BatchCount} batches, {context.Steps} steps, " +
                            $"checkpointing {(Options.Checkpointing ? "on" : "off")}");
        string fingerprint = EcoDiffCheckpoint.Fingerprint(Options, context, seed);
        int first = 1;
        if (Options.Resume)
        {
            first = EcoDiffCheckpoint.Load(Options.CheckpointFolder!, fingerprint, objective, optimizer, _history) + 1;
            context.Log?.Invoke($"ecodiff: resumed after iteration {first - 1} from {Options.CheckpointFolder}");
        }
        for (int iteration = first; iteration <= Options.Iterations; iteration++)
        {
            context.Cancellation.ThrowIfCancellationRequested();
            var clock = Stopwatch.StartNew();
            int batchIndex = (iteration - 1) % objective.BatchCount;
            var loss = GcPause.Run(() =>
            {
                optimizer.ZeroGrad();
                var result = objective.Backward(batchIndex);
                Runtime.NonFiniteCheck.Loss("ecodiff", iteration, result.Reconstruction, "reconstruction loss");
                Runtime.NonFiniteCheck.Loss("ecodiff", iteration, result.Loss);
                Runtime.NonFiniteCheck.Gradients("ecodiff", iteration, objective.NamedParameters().Select(p => (p.name, (Tensor?)p.param.grad)));
                optimizer.Step(Options.LearningRate);
                return result;
            });
            NativeMemory.Trim();
            double beta = objective.Beta, kept = objective.ExpectedKeptFraction();
            if (Options.TargetKeptFraction is double target)
                objective.Beta = Math.Clamp(beta * Math.Exp(Options.BetaGain * (kept - target)), 1e-4, 1e4);
            var report = new EcoDiffIterationReport(iteration, loss.Loss, loss.Reconstruction, loss.Regularizer,
                kept, clock.Elapsed.TotalSeconds, NativeMemory.PeakResidentBytes(), beta);
            _history.Add(report);
            if (Options.CheckpointFolder is { } folder && iteration % Options.CheckpointEvery == 0 && iteration < Options.Iterations)
                EcoDiffCheckpoint.Save(folder, fingerprint, iteration, objective, optimizer, _history);
            OnIteration?.Invoke(report);
        }
        return objective.Scores();
    }
}

/// <summary>
/// The EcoDiff objective on one model: gates on every unit group, a seeded calibration set with the original
/// model's final latents cached per batch, and <see cref="Backward"/>, which leaves d(loss)/d(lambda) in the
/// logits' .grad. While it exists the model's weights have requires_grad false and the model is in eval mode;
/// <see cref="Dispose"/> restores both and removes the gates.
/// </summary>
public sealed class EcoDiffObjective : IDisposable
{
    private readonly DiffusionModel _model;
    private readonly PrunableGroups _groups;
    private readonly IDiffusionScheduler _scheduler;
    private readonly EcoDiffOptions _options;
    private readonly long[] _timesteps;
    private readonly Tensor _noise;
    private readonly Tensor? _labels;
    private readonly Tensor? _promptStates;   // [K, tokens, D]: sample k's prompt (text-conditioned models)
    private readonly Tensor? _negativeStates; // [K, tokens, D]: the empty negative prompt's, with guidance above 1
    private readonly Tensor? _varianceNoise; // [steps, K, C, H, W] for stochastic samplers, shared by both trajectories
    private readonly Dictionary<int, Tensor> _targets = [];
    private readonly Generator _gateNoise;
    private readonly List<(Parameter parameter, bool requiresGrad)> _frozen = [];
    private readonly bool _wasTraining;
    private readonly long _totalParameters;
    private double _beta;
    private readonly double _regularizerNorm; // sum over units of their weight (1 or parameters per unit)
    private readonly Dictionary<EcoDiffUnitTypes, int> _layersPerType; // gated layers of each unit type (the per-layer mean)

    /// <summary>The unit type of a group: ResNet channels, attention heads or feed-forward neurons.</summary>
    public static EcoDiffUnitTypes UnitType(UnitGroup group) => group switch
    {
        ResnetChannelGroup => EcoDiffUnitTypes.Channels,
        AttentionHeadGroup => EcoDiffUnitTypes.Heads,
        FeedForwardGroup or GegluFeedForwardGroup => EcoDiffUnitTypes.FeedForward,
        _ => throw new ArgumentException($"Unknown unit group type {group.GetType().Name}.", nameof(group)),
    };

    /// <param name="text">
    /// For a text-conditioned model (a Stable Diffusion U-Net): the calibration prompts' states; sample k follows prompt
    /// k mod P, guided by <see cref="EcoDiffOptions.GuidanceScale"/> against the negative states (classifier-free, as the
    /// pipeline samples). Required for such a model, refused for the others.
    /// </param>
    public EcoDiffObjective(DiffusionModel model, PrunableGroups groups, IDiffusionScheduler scheduler, int steps, int calibrationSamples,
        EcoDiffOptions options, long seed, TextCalibration? text = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(groups);
        ArgumentNullException.ThrowIfNull(scheduler);
        options.Validate();
        if (!ReferenceEquals(groups.Model, model)) throw new ArgumentException("The groups belong to a different model.", nameof(groups));
        if (steps < 1) throw new ArgumentException($"EcoDiff needs at least one sampling step (got {steps}).", nameof(steps));
        if (calibrationSamples < 1) throw new ArgumentException($"EcoDiff needs at least one calibration sample (got {calibrationSamples}).", nameof(calibrationSamples));
        if (groups.Units.Count == 0) throw new ArgumentException($"{model.ClassName} has no prunable unit groups.", nameof(groups));
        CheckScheduler(scheduler);
        bool textConditioned = Families.ModelFamilies.ConditioningOf(model).Kind == Families.ConditioningKind.TextStates;
        if (textConditioned && text is null)
            throw new ArgumentException($"EcoDiff on a {model.ClassName} calibrates on prompts, which need the text encoder: give the Stable Diffusion " +
                "pipeline folder (model_index.json) rather than its unet/ alone.");
        if (!textConditioned && text is not null)
            throw new ArgumentException($"Calibration prompts are for text-conditioned models; {model.ClassName} takes none.");
        if (text is not null && options.GuidanceScale > 1.0 && text.Embeddings.NegativePromptEmbeds is null)
            throw new ArgumentException($"Guidance scale {options.GuidanceScale} needs the negative prompt's states beside the prompts'.");
        if (options.GuidanceScale != 1.0 && model.NullClass is null && text is null)
            throw new ArgumentException($"Classifier-free guidance (scale {options.GuidanceScale}) needs a class-conditional model with a null class; {model.ClassName} has none. Use guidance 1.");

        _model = model;
        _groups = groups;
        _scheduler = scheduler;
        _options = options;
        _beta = options.Beta;
        _scheduler.SetTimesteps(steps);
        _timesteps = _scheduler.Timesteps;
        _totalParameters = model.ParameterCount();
        var device = model.parameters().FirstOrDefault()?.device ?? CPU;

        // 1. the calibration set: K noises (and labels), fixed for the run.
        var generator = new Generator((ulong)seed);
        _noise = randn([calibrationSamples, model.InChannels, model.SampleSize[0], model.SampleSize[1]], generator: generator).to(device).DetachFromDisposeScope();
        if (model.NumClasses is int classes)
            _labels = randint(0, classes, [calibrationSamples], ScalarType.Int64, generator: generator).to(device).DetachFromDisposeScope();
        if (text is not null)
        {
            using var promptOfSample = arange(calibrationSamples, ScalarType.Int64) % text.Prompts.Count;
            _promptStates = text.Embeddings.PromptEmbeds.index_select(0, promptOfSample.to(text.Embeddings.PromptEmbeds.device)).to(device).DetachFromDisposeScope();
            if (options.GuidanceScale > 1.0)
                _negativeStates = text.Embeddings.NegativePromptEmbeds!.index_select(0, promptOfSample.to(text.Embeddings.PromptEmbeds.device)).to(device).DetachFromDisposeScope();
        }
        if (NeedsVarianceNoise(scheduler))
            _varianceNoise = randn([_timesteps.Length, calibrationSamples, model.InChannels, model.SampleSize[0], model.SampleSize[1]], generator: generator)
                .to(device).DetachFromDisposeScope();
        _gateNoise = new Generator((ulong)seed ^ 0x9E3779B97F4A7C15UL);
        BatchCount = (calibrationSamples + options.BatchSize - 1) / options.BatchSize;

        // 2. one gate per unit group.
        //    Only the unit types asked for; the others stay whole (no gate, no score).
        var gated = groups.Units.Where(g => (options.UnitTypes & UnitType(g)) != 0).ToList();
        if (gated.Count == 0)
            throw new ArgumentException($"{model.ClassName} has no units of the types asked for ({options.UnitTypes}); it has " +
                $"{string.Join(", ", groups.Units.Select(UnitType).Distinct())}; choose among those (--unit-types heads, ffn, channels).");
        Gates = gated.Select(g => (g, new HardConcreteGate(g.Units, options.InitialLogit, options.GateMode, options.Damping, device))).ToList();
        _regularizerNorm = Gates.Sum(g => g.Gate.Units * RegularizerWeight(g.Group));
        _layersPerType = Gates.GroupBy(g => UnitType(g.Group)).ToDictionary(t => t.Key, t => t.Count());

        // 3. freeze the model (restored on Dispose).
        _wasTraining = model.training;
        model.eval();
        foreach (var p in model.parameters())
        {
            _frozen.Add((p, p.requires_grad));
            p.requires_grad = false;
        }
    }

    public IReadOnlyList<(UnitGroup Group, HardConcreteGate Gate)> Gates { get; }

    /// <summary>Weight of the sparsity term in the next <see cref="Backward"/>; starts at the options' beta.</summary>
    public double Beta
    {
        get => _beta;
        set
        {
            if (!(value >= 0) || !double.IsFinite(value)) throw new ArgumentOutOfRangeException(nameof(value), $"beta must be >= 0 (got {value}).");
            _beta = value;
        }
    }

    /// <summary>Number of calibration batches (the calibration set is cycled).</summary>
    public int BatchCount { get; }

    public long[] Timesteps => (long[])_timesteps.Clone();

    /// <summary>The gate-noise generator's state (a checkpoint keeps it so a resumed run draws the same noise).</summary>
    public byte[] GateNoiseState
    {
        get
        {
            using var state = _gateNoise.get_state();
            return state.data<byte>().ToArray();
        }
        set
        {
            using var state = tensor(value);
            _gateNoise.set_state(state);
        }
    }

    /// <summary>The logits, named by group path, for the optimizer.</summary>
    public IEnumerable<(string name, Parameter param)> NamedParameters() => Gates.Select(g => (g.Group.Path, g.Gate.Logits));

    /// <summary>The current logits as scores (higher = keep).</summary>
    public UnitScores Scores()
    {
        var scores = new UnitScores();
        using var scope = NewDisposeScope();
        foreach (var (group, gate) in Gates)
            scores[group.Path] = gate.Logits.detach().cpu().data<float>().ToArray();
        return scores;
    }

    /// <summary>Expected fraction of the model's parameters kept under the current logits.</summary>
    public double ExpectedKeptFraction()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        double removed = 0;
        foreach (var (group, gate) in Gates)
            removed += (1 - gate.KeepProbability()).sum().cpu().item<float>() * (double)group.ParametersPerUnit;
        return 1 - removed / _totalParameters;
    }

    /// <summary>Computes and caches the original model's final latents of every calibration batch.</summary>
    public void PrecomputeTargets()
    {
        for (int b = 0; b < BatchCount; b++) Target(b);
    }

    /// <summary>
    /// Samples one set of gates, runs calibration batch <paramref name="batch"/> through the whole sampler with them,
    /// and ACCUMULATES d(loss)/d(lambda) into the logits' .grad (zero them first). Uses time-step gradient
    /// checkpointing when the options say so; both paths give the same gradient.
    /// </summary>
    public EcoDiffLoss Backward(int batch)
    {
        if (batch < 0 || batch >= BatchCount) throw new ArgumentOutOfRangeException(nameof(batch), $"There are {BatchCount} calibration batches.");
        var target = Target(batch);
        using var scope = NewDisposeScope();
        var (start, count) = BatchRange(batch);
        var noise = _noise.narrow(0, start, count);
        var labels = _labels?.narrow(0, start, count);
        var text = TextOf(start, count);
        var varianceNoise = _varianceNoise?.narrow(1, start, count);

        // 1. gates: one hard-concrete sample per iteration, the same for every step of the trajectory.
        var gates = Gates.Select(g => g.Gate.Sample(_gateNoise)).ToList();
        var regularizer = Regularizer();
        try
        {
            Tensor reconstruction;
            if (_options.Checkpointing)
                reconstruction = BackwardCheckpointed(gates, noise, labels, text, varianceNoise, target, regularizer);
            else
            {
                for (int i = 0; i < gates.Count; i++) Gates[i].Group.ApplyMask(gates[i]);
                var latents = noise;
                for (int i = 0; i < _timesteps.Length; i++) latents = StepOnce(latents, i, labels, text, varianceNoise);
                reconstruction = nn.functional.mse_loss(latents, target);
                (reconstruction + regularizer * _beta).backward();
            }
            double rec = reconstruction.item<float>(), reg = regularizer.item<float>();
            return new EcoDiffLoss(rec + _beta * reg, rec, reg);
        }
        finally
        {
            _groups.ClearMasks();
        }
    }

    /// <summary>
    /// Time-step gradient checkpointing: (1) run the trajectory without grad keeping only the T+1 latents;
    /// (2) g = dL/dx at the final latent; (3) for t = T..1 recompute step t from its stored latent with grad and
    /// take the vector-Jacobian products with g: dL/dgate accumulates, g becomes dL/dx_t. Finally the gate
    /// gradient is chained into the logits together with the regulariser. Activation memory is one step's graph.
    /// </summary>
    private Tensor BackwardCheckpointed(List<Tensor> gates, Tensor noise, Tensor? labels, Inference.PromptEmbeddings? text, Tensor? varianceNoise, Tensor target, Tensor regularizer)
    {
        // The model sees detached copies of the sampled gates; their gradients are summed over steps and chained
        // through the (small) gate graph once at the end: d(step)/d(lambda)·g = (d gate/d lambda)ᵀ (d(step)/d gate · g).
        var leaves = gates.Select(g => g.detach().requires_grad_(true)).ToList();
        for (int i = 0; i < leaves.Count; i++) Gates[i].Group.ApplyMask(leaves[i]);

        // 1. forward, no graph: latents[0] = noise, latents[i + 1] = step i (latents[T] = x0).
        int steps = _timesteps.Length;
        var latents = new Tensor[steps + 1];
        latents[0] = noise;
        using (no_grad())
            for (int i = 0; i < steps; i++)
            {
                using var stepScope = NewDisposeScope();
                latents[i + 1] = StepOnce(latents[i], i, labels, text, varianceNoise).MoveToOuterDisposeScope();
            }

        // 2. dL/dx0 of the mean squared error.
        var reconstruction = nn.functional.mse_loss(latents[steps], target);
        var g = ((latents[steps] - target) * (2.0 / target.numel())).detach();

        // 3. backwards through the steps, one step's graph at a time.
        var gateGrads = leaves.Select(l => zeros_like(l)).ToList();
        for (int i = steps - 1; i >= 0; i--)
        {
            using var stepScope = NewDisposeScope();
            bool chain = i > 0; // dL/d(noise) is not needed
            var x = chain ? latents[i].detach().requires_grad_(true) : latents[i];
            var output = StepOnce(x, i, labels, text, varianceNoise);
            var inputs = chain ? new List<Tensor>(leaves.Count + 1) { x } : new List<Tensor>(leaves.Count);
            inputs.AddRange(leaves);
            var grads = autograd.grad([output], inputs, [g]);
            int offset = chain ? 1 : 0;
            for (int k = 0; k < leaves.Count; k++) gateGrads[k].add_(grads[k + offset]);
            if (chain)
            {
                g.Dispose();
                g = grads[0].detach().MoveToOuterDisposeScope();
            }
            latents[i + 1].Dispose();
        }

        // 4. into the logits: gate gradients and the regulariser, one small backward.
        var total = regularizer * _beta;
        for (int k = 0; k < gates.Count; k++) total = total + (gates[k] * gateGrads[k]).sum();
        total.backward();
        return reconstruction;
    }

    private double RegularizerWeight(UnitGroup group) => _options.ParameterWeighted ? group.ParametersPerUnit : 1.0;

    /// <summary>
    /// The sparsity term R, with graph: averaged over all gated units (each weighing 1 or its parameters), or per layer
    /// and then over each unit type's layers, summed over the types (<see cref="RegularizerMean.Layers"/>).
    /// </summary>
    public Tensor Regularizer() => _options.RegularizerMean == RegularizerMean.Units
        ? Gates.Select(g => g.Gate.Regularizer(_options.Regularizer) * RegularizerWeight(g.Group)).Aggregate((a, b) => a + b) / _regularizerNorm
        : Gates.Select(g => g.Gate.Regularizer(_options.Regularizer) / (g.Gate.Units * (double)_layersPerType[UnitType(g.Group)])).Aggregate((a, b) => a + b);

    /// <summary>The text states of calibration samples [start, start + count), borrowed views; null for models without text.</summary>
    private PromptEmbeddings? TextOf(int start, int count) => _promptStates is null
        ? null
        : new PromptEmbeddings(_promptStates.narrow(0, start, count), _negativeStates?.narrow(0, start, count));

    /// <summary>One sampler step: guided prediction (class or text guidance), then the scheduler's (differentiable) step.</summary>
    private Tensor StepOnce(Tensor latents, int index, Tensor? labels, PromptEmbeddings? text, Tensor? varianceNoise)
    {
        long timestep = _timesteps[index];
        var t = tensor(timestep, device: latents.device);
        var prediction = text is null
            ? DiffusionSampler.Guided(_model.Predict, latents, t, labels, _model.NullClass, _options.GuidanceScale)
            : DiffusionSampler.TextGuided((sample, ts, states) => _model.Predict(sample, new Conditioning(ts, EncoderHiddenStates: states)),
                latents, t, text, _options.GuidanceScale);
        return _scheduler.Step(prediction, timestep, latents, varianceNoise?[index]).PrevSample;
    }

    /// <summary>The original (ungated) model's final latent of a batch, computed once and cached.</summary>
    private Tensor Target(int batch)
    {
        if (_targets.TryGetValue(batch, out var cached)) return cached;
        var (start, count) = BatchRange(batch);
        _groups.ClearMasks();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var latents = _noise.narrow(0, start, count);
        var labels = _labels?.narrow(0, start, count);
        var text = TextOf(start, count);
        var varianceNoise = _varianceNoise?.narrow(1, start, count);
        for (int i = 0; i < _timesteps.Length; i++)
        {
            using var stepScope = NewDisposeScope();
            latents = StepOnce(latents, i, labels, text, varianceNoise).MoveToOuterDisposeScope();
        }
        var target = latents.clone().DetachFromDisposeScope();
        _targets[batch] = target;
        return target;
    }

    private (int start, int count) BatchRange(int batch)
    {
        int start = batch * _options.BatchSize;
        return (start, (int)Math.Min(_options.BatchSize, _noise.shape[0] - start));
    }

    private static void CheckScheduler(IDiffusionScheduler scheduler)
    {
        switch (scheduler)
        {
            case DDIMScheduler:
                return;
            case DDPMScheduler ddpm when ddpm.Config.VarianceType is "learned" or "learned_range":
                throw new NotSupportedException(
                    $"EcoDiff with DDPM needs a fixed variance, but the scheduler's variance_type is '{ddpm.Config.VarianceType}'. Use the ddim sampler.");
            case DDPMScheduler:
                return;
            default:
                throw new NotSupportedException(
                    $"EcoDiff re-runs single sampler steps from stored latents, which needs a stateless sampler; {scheduler.GetType().Name} keeps " +
                    "state across steps. Use ddim (or ddpm).");
        }
    }

    private static bool NeedsVarianceNoise(IDiffusionScheduler scheduler) => scheduler switch
    {
        DDIMScheduler ddim => ddim.Eta > 0,
        DDPMScheduler => true,
        _ => false,
    };

    public void Dispose()
    {
        _groups.ClearMasks();
        foreach (var (p, requiresGrad) in _frozen) p.requires_grad = requiresGrad;
        _frozen.Clear();
        _model.train(_wasTraining);
        foreach (var (_, gate) in Gates) gate.Dispose();
        foreach (var t in _targets.Values) t.Dispose();
        _targets.Clear();
        _noise.Dispose();
        _labels?.Dispose();
        _promptStates?.Dispose();
        _negativeStates?.Dispose();
        _varianceNoise?.Dispose();
        _gateNoise.Dispose();
    }
}
