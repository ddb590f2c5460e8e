using DiffusionPrune.Data;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using DiffusionPrune.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning.Importance;

/// <summary>Settings of <see cref="TaylorImportance"/>; the defaults are the ones described there.</summary>
public sealed record TaylorOptions
{
    /// <summary>Timesteps visited: 0, stride, 2·stride, ... &lt; num_train_timesteps. Default 50 (20 timesteps of 1000).</summary>
    public int TimestepStride { get; init; } = 50;

    /// <summary>Diff-Pruning's thr: accumulation stops at the first timestep with L_t &lt; thr · L_max. Default 0.05.</summary>
    public double Threshold { get; init; } = 0.05;

    /// <summary>Images per forward/backward; the loss is still the mean over all calibration images. Default 32.</summary>
    public int MicroBatch { get; init; } = 32;

    /// <summary>Scaling of each group's raw sums (see <see cref="UnitNormalization"/>). Default PerParameter.</summary>
    public UnitNormalization Normalization { get; init; } = UnitNormalization.PerParameter;
}

/// <summary>One visited timestep of a Taylor scoring: its loss and whether its gradient entered the sum.</summary>
public sealed record TimestepLoss(long Timestep, double Loss, bool Accumulated);

/// <summary>
/// Diff-Pruning's informative-timestep rule (Fang et al. 2023): visiting timesteps from small to large,
/// a timestep is informative while its loss is at least <c>thr · L_max</c>; the first one below ends
/// the accumulation for good (later, noisier timesteps carry little information about the content).
/// <para>
/// L_max is the running maximum of the losses seen so far, including the current one — exactly the
/// reference code's <c>if loss &gt; loss_max: loss_max = loss; if loss &lt; loss_max * thr: break</c>.
/// The epsilon loss of a trained model is largest at the smallest timesteps, so the running maximum is
/// the maximum over the grid in practice; when it is not, the running rule can only stop later than a
/// rule using the grid's true maximum (its bar is never higher), never earlier. Unlike the reference,
/// whose backward runs before the check, the stopping timestep's gradient is not accumulated.
/// </para>
/// </summary>
public sealed class InformativeTimestepRule(double threshold)
{
    public double Threshold { get; } = threshold >= 0 && threshold <= 1
        ? threshold
        : throw new ArgumentOutOfRangeException(nameof(threshold), threshold, "The informative-timestep threshold must lie in [0, 1] (Diff-Pruning uses 0.05).");

    /// <summary>The largest loss seen so far (0 before the first).</summary>
    public double MaxLoss { get; private set; }

    /// <summary>Whether a loss below the bar has been seen; every later timestep is then rejected.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Records the next timestep's loss; true if its gradient is to be accumulated.</summary>
    public bool Accept(double loss)
    {
        if (!double.IsFinite(loss) || loss < 0)
            throw new ArgumentOutOfRangeException(nameof(loss), loss, "A denoising loss must be finite and non-negative; the model's output is not (diverged weights?).");
        if (Stopped) return false;
        MaxLoss = Math.Max(MaxLoss, loss);
        if (loss < Threshold * MaxLoss)
        {
            Stopped = true;
            return false;
        }
        return true;
    }

    /// <summary>How many leading losses of <paramref name="losses"/> (ascending timesteps) are informative.</summary>
    public static int InformativeCount(IEnumerable<double> losses, double threshold)
    {
        var rule = new InformativeTimestepRule(threshold);
        int count = 0;
        foreach (double loss in losses)
        {
            if (!rule.Accept(loss)) break;
            count++;
        }
        return count;
    }
}

/// <summary>
/// Diff-Pruning's Taylor importance: the importance of a unit is <c>Σ_w |w · Σ_{t∈T_inf} ∂L_t/∂w|</c>
/// over every weight the unit owns (all its coupled tensors), with T_inf the informative timesteps.
/// <list type="number">
/// <item><b>Data.</b> <c>context.CalibrationSamples</c> images x0 of the calibration data (<c>--data</c>; the MNIST train split by default), chosen by a
/// SplitMix64 shuffle seeded with <c>context.Seed</c> (and their digits as class labels for
/// class-conditional models). The same x0 serve every timestep. A text-conditioned U-Net (a Stable Diffusion pipeline's)
/// takes <see cref="Training.TeacherSamples"/> instead: latents its pipeline sampled from prompts, each conditioned on its
/// prompt's text states (<see cref="CalibrationImages.ConditionsOf"/>).</item>
/// <item><b>Timesteps.</b> The coarse grid 0, stride, 2·stride, ... below num_train_timesteps (stride 50 by
/// default: 20 of 1000 timesteps instead of the reference's every timestep, for CPU cost), visited in
/// ascending order; fresh noise ε per timestep from one generator seeded with <c>context.Seed</c>.</item>
/// <item><b>Loss.</b> <c>L_t = MSE(model(x_t, t[, c]), target)</c> (c: the class label or prompt states) with <c>x_t = AddNoise(x0, ε, t)</c>, the
/// scheduler config's betas, and the target its prediction_type asks for (ε for epsilon, as in
/// Diff-Pruning; v or x0 otherwise). Learned-sigma channels are dropped (<see cref="DiffusionModel.Predict"/>).</item>
/// <item><b>Accumulation.</b> <see cref="InformativeTimestepRule"/> (thr 0.05, running L_max): gradients of the
/// coupled weights are summed over the accepted timesteps; the first rejected one ends the loop.</item>
/// <item><b>Scores.</b> Per unit, <c>Σ |w · g|</c> over its slices of every coupled tensor, scaled by
/// <see cref="TaylorOptions.Normalization"/> (mean per weight by default, as <see cref="MagnitudeImportance"/>).</item>
/// </list>
/// The model's weights, requires_grad flags and train/eval mode are as before afterwards, and no
/// parameter keeps a gradient. The model runs in eval mode where its parameters live.
/// </summary>
public sealed class TaylorImportance(TaylorOptions? options = null, IImageDataset? calibrationData = null) : IImportanceCriterion
{
    public string Name => "taylor";
    public TaylorOptions Options { get; } = options ?? new TaylorOptions();

    /// <summary>
    /// The timesteps the last <see cref="Score"/> call visited, in order, with L_t and whether its gradient
    /// was accumulated (T_inf); the loop ends at the first one that was not.
    /// </summary>
    public IReadOnlyList<TimestepLoss> LastTrace { get; private set; } = [];

    /// <summary>The timesteps visited: 0, stride, 2·stride, ... &lt; <paramref name="numTrainTimesteps"/>.</summary>
    public static long[] TimestepGrid(int numTrainTimesteps, int stride)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(stride);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numTrainTimesteps);
        return Enumerable.Range(0, (numTrainTimesteps + stride - 1) / stride).Select(i => (long)i * stride).ToArray();
    }

    public UnitScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context)
    {
        if (context.CalibrationSamples < 1)
            throw new ArgumentException($"Taylor importance needs at least one calibration image; CalibrationSamples is {context.CalibrationSamples}.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Options.MicroBatch);
        var schedulerConfig = SchedulerConfig.Load(context.SchedulerConfigPath);
        var device = model.parameters().First().device;
        Runtime.NumericsGuard.RequireHealthy();

        // The distinct tensors whose gradients are needed (a bias shared by two views is counted once).
        var coupled = groups.Units.SelectMany(g => g.Coupled).DistinctBy(c => c.Key).ToDictionary(c => c.Key, c => c.Tensor, StringComparer.Ordinal);
        var parameters = model.parameters().ToList();
        var requiresGrad = parameters.Select(p => p.requires_grad).ToArray();
        bool wasTraining = model.training;
        var accumulated = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            // Only the coupled weights need gradients: the backward skips every other weight gradient.
            var coupledHandles = coupled.Values.Select(t => t.Handle).ToHashSet();
            foreach (var p in parameters) p.requires_grad = coupledHandles.Contains(p.Handle);
            model.eval();
            model.zero_grad();

            using var betas = NoiseSchedule.Betas(schedulerConfig);
            using var alphasCumprod = NoiseSchedule.AlphasCumprod(betas);
            var (images, labels, states) = CalibrationBatch(model, context);
            using var x0 = images;
            using var classLabels = labels;
            using var textStates = states;
            var generator = new Generator(unchecked((ulong)context.Seed));
            var rule = new InformativeTimestepRule(Options.Threshold);
            var trace = new List<TimestepLoss>();
            LastTrace = trace;

            foreach (long t in TimestepGrid(schedulerConfig.NumTrainTimesteps, Options.TimestepStride))
            {
                context.Cancellation.ThrowIfCancellationRequested();
                double loss = GradientAt(model, schedulerConfig.PredictionType, alphasCumprod, x0, classLabels, textStates, t, generator, device);
                Runtime.NonFiniteCheck.Loss("taylor", (int)t, loss, $"loss at timestep {t}");
                Runtime.NonFiniteCheck.Gradients("taylor", (int)t, coupled.Select(c => (c.Key, c.Value.grad)));
                bool accept = rule.Accept(loss);
                trace.Add(new TimestepLoss(t, loss, accept));
                context.Log?.Invoke($"taylor: t={t} L_t={loss:G4} L_max={rule.MaxLoss:G4} {(accept ? "accumulated" : $"< {Options.Threshold} L_max: stop")}");
                if (!accept) break;
                using (no_grad())
                {
                    foreach (var (key, tensor) in coupled)
                    {
                        if (tensor.grad is not { } grad) continue; // unused by the forward (e.g. a gate-bypassed layer)
                        if (accumulated.TryGetValue(key, out var sum)) sum.add_(grad);
                        else accumulated[key] = grad.detach().clone();
                    }
                }
                model.zero_grad();
            }

            var scores = new UnitScores();
            foreach (var group in groups.Units)
            {
                var raw = UnitSums.Of(group, c => accumulated.TryGetValue(c.Key, out var g) ? (c.Tensor.detach() * g).abs() : zeros_like(c.Tensor));
                scores[group.Path] = UnitSums.Normalize(group, raw, Options.Normalization);
            }
            return scores;
        }
        finally
        {
            model.zero_grad();
            foreach (var t in accumulated.Values) t.Dispose();
            for (int i = 0; i < parameters.Count; i++) parameters[i].requires_grad = requiresGrad[i];
            model.train(wasTraining);
            NativeMemory.Trim();
        }
    }

    /// <summary>
    /// Backpropagates L_t (the mean over all calibration images, in micro-batches) into the weights'
    /// gradients and returns its value.
    /// </summary>
    private double GradientAt(DiffusionModel model, string predictionType, Tensor alphasCumprod, Tensor x0, Tensor? labels, Tensor? textStates, long t,
        Generator generator, Device device)
    {
        long count = x0.shape[0];
        using var noise = randn(x0.shape, generator: generator); // drawn on the CPU: the same on every device
        double total = 0;
        for (long start = 0; start < count; start += Options.MicroBatch)
        {
            long length = Math.Min(Options.MicroBatch, count - start);
            total += GcPause.Run(() => // implicit scalars must outlive the native calls that read them
            {
                using var scope = NewDisposeScope();
                var original = x0.narrow(0, start, length);
                var eps = noise.narrow(0, start, length);
                var timesteps = full([length], t, ScalarType.Int64);
                var noisy = NoiseSchedule.AddNoise(alphasCumprod, original, eps, timesteps);
                var target = predictionType switch
                {
                    "epsilon" => eps,
                    "v_prediction" => NoiseSchedule.GetVelocity(alphasCumprod, original, eps, timesteps),
                    "sample" => original,
                    _ => throw new NotSupportedException($"prediction_type '{predictionType}' is not supported by Taylor importance (epsilon, v_prediction, sample)."),
                };
                var prediction = model.Predict(noisy.to(device), new Conditioning(timesteps.to(device), labels?.narrow(0, start, length).to(device),
                    EncoderHiddenStates: textStates?.narrow(0, start, length).to(device)));
                // Weighted by the micro-batch's share, so the gradients add up to those of the mean over all images.
                var loss = nn.functional.mse_loss(prediction, target.to(device)) * (length / (double)count);
                loss.backward();
                return (double)loss.item<float>();
            });
            NativeMemory.Trim();
        }
        return total;
    }

    /// <summary>
    /// The seeded calibration images [N, C, H, W] (CPU) and what they condition the model on: labels for class-conditional
    /// models, prompt states [N, tokens, D] for a text-conditioned U-Net (<see cref="CalibrationImages.ConditionsOf"/>).
    /// </summary>
    /// <remarks>The data given (<c>--data</c>), else the MNIST training split, which fits only 1 x 32 x 32 models of at least 10 classes.</remarks>
    private (Tensor Images, Tensor? Labels, Tensor? TextStates) CalibrationBatch(DiffusionModel model, ImportanceContext context)
    {
        var split = CalibrationImages.Open(model, calibrationData ?? context.CalibrationData, "Taylor importance");
        if (context.CalibrationSamples > split.Count)
            throw new ArgumentException($"CalibrationSamples is {context.CalibrationSamples}, but the {split.Name} holds {split.Count} images; ask for at most that many.");
        int[] order = Enumerable.Range(0, split.Count).ToArray();
        new SplitMix64(unchecked((ulong)context.Seed)).Shuffle(order.AsSpan());
        var chosen = order.AsSpan(0, context.CalibrationSamples);
        var (labels, states) = CalibrationImages.ConditionsOf(model, split, chosen);
        return (split.Images(chosen), labels, states);
    }
}
