using DiffusionPrune.Data;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning.Importance;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning.Layers;

/// <summary>Settings of <see cref="LearnableDepthCriterion"/>.</summary>
public sealed record LearnableDepthOptions
{
    /// <summary>Joint mask-and-weight updates (the short recovery schedule).</summary>
    public int Iterations { get; init; } = 100;

    /// <summary>Images per update.</summary>
    public int BatchSize { get; init; } = 16;

    /// <summary>Learning rate of the weight delta (a full-rank update of a copy of the weights; the model itself is not changed).</summary>
    public double WeightLearningRate { get; init; } = 1e-4;

    /// <summary>Learning rate of the mask logits.</summary>
    public double MaskLearningRate { get; init; } = 0.2;

    /// <summary>Gumbel-softmax temperature, annealed geometrically from the start to the end value.</summary>
    public double StartTemperature { get; init; } = 1.0;
    public double EndTemperature { get; init; } = 0.1;

    /// <summary>The most candidate layer sets the categorical mask may range over.</summary>
    public int MaxCandidateSets { get; init; } = 4096;

    public void Validate()
    {
        if (Iterations < 1) throw new ArgumentException($"learnable-depth needs at least one iteration (got {Iterations}).");
        if (BatchSize < 1) throw new ArgumentException($"learnable-depth needs a batch of at least one image (got {BatchSize}).");
        if (!(WeightLearningRate >= 0) || !(MaskLearningRate > 0)) throw new ArgumentException("learnable-depth's learning rates must be positive (the weight rate may be 0).");
        if (!(StartTemperature > 0) || !(EndTemperature > 0)) throw new ArgumentException("Gumbel-softmax temperatures must be positive.");
    }
}

/// <summary>
/// Learnable depth (TinyFusion-style): the layers to remove are chosen by how well the model RECOVERS without them.
/// A categorical distribution ranges over the minimal layer sets that meet the budget; each update samples a set with
/// straight-through Gumbel-softmax, gates those layers to the identity and takes one step of the denoising loss on
/// calibration images for both the mask logits and a weight delta (a copy of the weights; the model given is left as
/// it was). The most probable set at the end is the choice; scores are each layer's probability of being kept.
/// A text-conditioned U-Net (a Stable Diffusion pipeline's) trains on its pipeline's own samples from prompts
/// (<see cref="Training.TeacherSamples"/>), the loss conditioned on each latent's prompt states (<see cref="CalibrationImages.ConditionsOf"/>).
/// </summary>
public sealed class LearnableDepthCriterion(LearnableDepthOptions? options = null) : ILayerCriterion
{
    public string Name => "learnable-depth";
    public LearnableDepthOptions Options { get; } = options ?? new LearnableDepthOptions();

    /// <summary>The denoising loss of each update of the last run.</summary>
    public IReadOnlyList<double> LossHistory { get; private set; } = [];

    public LayerScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context, LayerTarget? target = null)
    {
        Options.Validate();
        LayerCriterion.Check(model, groups);
        if (target is null) throw new ArgumentException("learnable-depth chooses layer sets that meet a budget; give the target.", nameof(target));
        var sets = CandidateSets(groups.Layers.Select(l => target.Costs.Saving[l.Path]).ToArray(), target.Needed, Options.MaxCandidateSets);
        var dataset = CalibrationImages.Open(model, context.CalibrationData, "learnable-depth");
        var schedulerConfig = SchedulerConfig.Load(context.SchedulerConfigPath);
        if (schedulerConfig.PredictionType != "epsilon")
            throw new ArgumentException($"learnable-depth trains on the epsilon objective; the scheduler predicts '{schedulerConfig.PredictionType}'.");
        context.Log?.Invoke($"learnable-depth: {sets.Count} candidate sets of the {groups.Layers.Count} removable layers meet the budget; " +
                            $"{Options.Iterations} joint updates of {Options.BatchSize} images on {dataset.Name}");

        var device = model.parameters().First().device;
        using var work = StructuralSurgery.Apply(model, new PruningPlan()); // the weights the recovery update trains: a copy, on the model's device
        work.eval();
        var layers = PrunableGroups.Of(work).Layers;
        using var membership = MembershipMatrix(sets, layers.Count).to(device); // [K, L]
        var logits = new TorchSharp.Modules.Parameter(zeros(sets.Count, device: device));
        using var maskOptimizer = new Training.AdamW([("mask_logits", logits)]);
        var weights = work.named_parameters().Select(p => (p.name, p.parameter)).ToList();
        using var weightOptimizer = new Training.AdamW(weights);
        using var betas = NoiseSchedule.Betas(schedulerConfig);
        using var alphasCumprod = NoiseSchedule.AlphasCumprod(betas).to(device);
        var losses = new List<double>();
        try
        {
            for (int iteration = 1; iteration <= Options.Iterations; iteration++)
            {
                context.Cancellation.ThrowIfCancellationRequested();
                int it = iteration;
                double tau = Options.StartTemperature * Math.Pow(Options.EndTemperature / Options.StartTemperature, (it - 1) / (double)Math.Max(1, Options.Iterations - 1));
                double loss = GcPause.Run(() =>
                {
                    using var scope = NewDisposeScope();
                    var generator = new Generator((ulong)(context.Seed * 1_000_003L + it), device);
                    var indices = randint(0, dataset.Count, [Options.BatchSize], ScalarType.Int64, generator: generator).data<long>().Select(i => (int)i).ToArray();
                    var images = dataset.Images(indices).to(device);
                    var (labels, states) = CalibrationImages.ConditionsOf(work, dataset, indices);
                    var noise = randn(images.shape, generator: generator, device: device);
                    var timesteps = randint(0, schedulerConfig.NumTrainTimesteps, [Options.BatchSize], ScalarType.Int64, generator: generator, device: device);
                    var noisy = NoiseSchedule.AddNoise(alphasCumprod, images, noise, timesteps);

                    // Straight-through Gumbel-softmax: the forward uses one sampled set exactly; the gradient reaches every logit.
                    var uniform = rand([sets.Count], generator: generator, device: device).clamp(1e-10, 1 - 1e-10);
                    var soft = softmax((logits - (-uniform.log()).log()) / tau, 0);
                    var hard = nn.functional.one_hot(soft.argmax(), sets.Count).to_type(soft.dtype);
                    var sample = hard + soft - soft.detach();
                    var gates = 1 - matmul(sample.unsqueeze(0), membership).squeeze(0); // [L]: 0 removed, 1 kept
                    for (int l = 0; l < layers.Count; l++) layers[l].ApplyMask(gates[l]);

                    maskOptimizer.ZeroGrad();
                    weightOptimizer.ZeroGrad();
                    var conditioning = new Conditioning(timesteps, labels?.to(device), EncoderHiddenStates: states?.to(device));
                    var taskLoss = nn.functional.mse_loss(work.Predict(noisy, conditioning), noise);
                    taskLoss.backward();
                    double value = taskLoss.item<float>();
                    NonFiniteCheck.Loss("learnable-depth", it, value);
                    NonFiniteCheck.Gradients("learnable-depth", it, [("mask_logits", logits.grad)]);
                    maskOptimizer.Step(Options.MaskLearningRate);
                    if (Options.WeightLearningRate > 0) weightOptimizer.Step(Options.WeightLearningRate);
                    foreach (var layer in layers) layer.ClearMask();
                    return value;
                });
                NativeMemory.Trim();
                losses.Add(loss);
                if (it % 10 == 0 || it == Options.Iterations)
                {
                    var (best, probability) = MostProbable(logits);
                    context.Log?.Invoke($"learnable-depth: {it}/{Options.Iterations} loss {loss:F4} tau {tau:F2}; most probable set ({probability:P0}): " +
                                        string.Join(", ", sets[best].Select(i => layers[i].Path)));
                }
            }
        }
        finally
        {
            foreach (var layer in layers) layer.ClearMask();
        }
        LossHistory = losses;

        using var probabilities = softmax(logits.detach(), 0).cpu();
        var p = probabilities.data<float>().ToArray();
        var scores = new LayerScores();
        for (int l = 0; l < groups.Layers.Count; l++)
            scores[groups.Layers[l].Path] = 1 - sets.Select((set, k) => set.Contains(l) ? p[k] : 0.0).Sum();
        var ranked = Enumerable.Range(0, sets.Count).OrderByDescending(k => p[k]).ThenBy(k => k).ToArray();
        scores.Chosen = sets[ranked[0]].Select(i => groups.Layers[i].Path).ToArray();
        scores.LearnedSets = ranked.Take(5).Select(k => ((IReadOnlyList<string>)sets[k].Select(i => groups.Layers[i].Path).ToArray(), (double)p[k])).ToArray();
        logits.Dispose();
        return scores;
    }

    private static (int Index, double Probability) MostProbable(Tensor logits)
    {
        using var scope = NewDisposeScope();
        var p = softmax(logits.detach(), 0).cpu().data<float>().ToArray();
        int best = Array.IndexOf(p, p.Max());
        return (best, p[best]);
    }

    private static Tensor MembershipMatrix(IReadOnlyList<int[]> sets, int layers)
    {
        var data = new float[sets.Count * layers];
        for (int k = 0; k < sets.Count; k++)
            foreach (int l in sets[k]) data[k * layers + l] = 1;
        return tensor(data, [sets.Count, layers]);
    }

    /// <summary>
    /// Every minimal set of layer indices whose savings reach <paramref name="needed"/>: removing any one of its layers
    /// would miss the target (a superset only removes more). In ascending bit order.
    /// </summary>
    public static IReadOnlyList<int[]> CandidateSets(IReadOnlyList<double> savings, double needed, int max = 4096)
    {
        int n = savings.Count;
        if (n > 24)
            throw new ArgumentException($"learnable-depth enumerates layer sets and supports up to 24 removable layers; this model has {n}. Use laptop.");
        var sets = new List<int[]>();
        for (int mask = 1; mask < 1 << n; mask++)
        {
            double sum = 0, smallest = double.PositiveInfinity;
            for (int i = 0; i < n; i++)
                if ((mask >> i & 1) == 1)
                {
                    sum += savings[i];
                    smallest = Math.Min(smallest, savings[i]);
                }
            if (sum < needed || sum - smallest >= needed) continue;
            if (sets.Count == max)
                throw new ArgumentException($"More than {max} minimal layer sets meet the budget; learnable-depth's categorical mask would be too large. Use laptop.");
            sets.Add(Enumerable.Range(0, n).Where(i => (mask >> i & 1) == 1).ToArray());
        }
        if (sets.Count == 0)
            throw new ArgumentException($"No set of the {n} removable layers saves {needed:G4}; lower the target.");
        return sets;
    }
}
