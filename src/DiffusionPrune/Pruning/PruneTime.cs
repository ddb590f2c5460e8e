using System.Diagnostics;
using System.Globalization;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning.Importance;
using DiffusionPrune.Pruning.Layers;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>
/// Network passes of one batch size that a run makes: <see cref="Forwards"/> passes without gradients and
/// <see cref="Backwards"/> passes with a backward (forward + backward each), whose gradients reach the weights
/// (<see cref="WeightGradients"/>: Taylor, learnable depth) or only the activations (EcoDiff's gates).
/// </summary>
public sealed record NetworkWork(int Batch, long Forwards, long Backwards, string What, bool WeightGradients = true)
{
    /// <summary>The pass to time for this work: its batch, whether it has a backward, and into what.</summary>
    public PassKind Kind => new(Batch, Backwards > 0, WeightGradients);
}

/// <summary>A kind of pass to time: a batch size, with or without a backward, into the weights or only the activations.</summary>
public readonly record struct PassKind(int Batch, bool Backward, bool WeightGradients);

/// <summary>One pass of the network at <see cref="Batch"/>, timed on this machine: without gradients and with a backward.</summary>
public sealed record PassTimes(int Batch, double ForwardMilliseconds, double BackwardMilliseconds);

/// <summary>A prune run's time, from its <see cref="Work"/> and pass times measured on this machine (<see cref="Cpu"/>, <see cref="Threads"/>).</summary>
public sealed record PruneTimeEstimate(TimeSpan Total, IReadOnlyList<NetworkWork> Work, IReadOnlyList<PassTimes> Times, string Cpu, int Threads)
{
    /// <summary>One line for people: the total, what it is made of and where it was measured.</summary>
    public string Describe()
    {
        var inv = CultureInfo.InvariantCulture;
        if (Work.Count == 0)
            return $"about {PruneTime.Format(Total)}: the method reads weights only, no network pass (load, surgery and save)";
        var parts = Work.Select(w =>
        {
            var t = Times.First(p => p.Batch == w.Batch);
            var passes = new List<string>();
            if (w.Forwards > 0) passes.Add(string.Create(inv, $"{w.Forwards:N0} forward passes at batch {w.Batch} ({t.ForwardMilliseconds:F1} ms each)"));
            if (w.Backwards > 0) passes.Add(string.Create(inv, $"{w.Backwards:N0} forward+backward{(w.WeightGradients ? "" : " (to the activations)")} at batch {w.Batch} ({t.BackwardMilliseconds:F1} ms each)"));
            return $"{w.What}: {string.Join(" and ", passes)}";
        });
        return string.Create(inv, $"about {PruneTime.Format(Total)}: {string.Join("; ", parts)}; passes timed just now on {Cpu}, {Threads} threads");
    }
}

/// <summary>
/// Estimates how long a prune run takes before it starts: counts the network passes each method makes (from its
/// settings and the model's layers; an upper bound where a method may stop early, as Taylor's informative-timestep
/// rule does) and times one pass of each kind at each batch size on this machine. The count follows each method's
/// loop: EcoDiff's targets and per-iteration trajectory plus checkpointed backward, Taylor's timestep grid, the
/// layer criteria's calibration trajectory and one trajectory (or step set) per layer, learnable depth's updates.
/// </summary>
public static class PruneTime
{
    /// <summary>Load, surgery and save, which every method pays once; small beside the passes of a learning method.</summary>
    public static readonly TimeSpan Overhead = TimeSpan.FromSeconds(0.5);

    /// <summary>The passes <paramref name="request"/> makes on <paramref name="model"/>, grouped by batch size.</summary>
    public static IReadOnlyList<NetworkWork> Work(DiffusionModel model, PruneRequest request)
    {
        var entry = ImportanceCriteria.Find(request.Method)
            ?? throw new ArgumentException($"Unknown importance criterion '{request.Method}'. Known criteria: {string.Join(", ", ImportanceCriteria.Names)}.");
        int steps = Math.Max(1, request.Steps), calibration = Math.Max(1, request.Calibration);
        switch (entry.Name)
        {
            case "ecodiff":
            case "ecodiff-layer": // the same mask learning; the layer form only aggregates its logits
            {
                var eco = request.EcoDiff;
                bool guided = (request.GuidanceIfConditional is double g ? g : eco.GuidanceScale) > 1 && model.NullClass is not null;
                int batchCount = (calibration + eco.BatchSize - 1) / eco.BatchSize;
                // Per calibration batch: its unmasked targets once; then iteration i takes batch (i - 1) mod count for a
                // trajectory without gradients and (checkpointing) each step again with its backward. The last batch
                // may be smaller, and guidance runs conditional and unconditional together.
                var work = new Dictionary<int, (long Forwards, long Backwards)>();
                for (int k = 0; k < batchCount; k++)
                {
                    int batch = Math.Min(eco.BatchSize, calibration - k * eco.BatchSize) * (guided ? 2 : 1);
                    long iterations = request.Iterations / batchCount + (k < request.Iterations % batchCount ? 1 : 0);
                    var (f, b) = work.GetValueOrDefault(batch);
                    work[batch] = (f + steps * (1 + iterations), b + steps * iterations);
                }
                string what = string.Create(CultureInfo.InvariantCulture, $"{request.Iterations} iterations x {steps} steps");
                // the checkpointed backward differentiates the gates through the activations: no weight gradients
                return work.OrderByDescending(w => w.Key).Select(w => new NetworkWork(w.Key, w.Value.Forwards, w.Value.Backwards, what, WeightGradients: false)).ToList();
            }
            case "taylor":
            {
                var options = request.Taylor;
                int timesteps = TaylorImportance.TimestepGrid(TrainTimesteps(request), options.TimestepStride).Length;
                int micro = Math.Min(calibration, options.MicroBatch);
                long chunks = (calibration + options.MicroBatch - 1) / options.MicroBatch;
                return [.. CalibrationLatents(request), new NetworkWork(micro, 0, timesteps * chunks, $"at most {timesteps} timesteps x {calibration} images")];
            }
            case "laptop":
            case "ldpruner":
            {
                int layers = PrunableGroups.Of(model).Layers.Count;
                // the full trajectory once (recorded), then per layer its steps again; LAPTOP adds its additivity subsets
                long sets = 1 + layers + (entry.Name == "laptop" ? Math.Min(request.AdditivitySubsets, SubsetCap(layers)) : 0);
                return [new NetworkWork(calibration, sets * steps, 0,
                    string.Create(CultureInfo.InvariantCulture, $"{sets} layer sets x {steps} steps"))];
            }
            case "learnable-depth":
            {
                // the joint updates, then the one-shot choice it is compared with (LAPTOP's output loss, no subsets)
                long sets = 1 + PrunableGroups.Of(model).Layers.Count;
                return
                [
                    .. CalibrationLatents(request),
                    new NetworkWork(new LearnableDepthOptions().BatchSize, 0, request.Iterations, $"{request.Iterations} updates"),
                    new NetworkWork(calibration, sets * steps, 0, string.Create(CultureInfo.InvariantCulture, $"the one-shot comparison, {sets} layer sets x {steps} steps")),
                ];
            }
            default:
                return []; // magnitude, random, random-layer: weights only
        }
    }

    /// <summary>
    /// taylor and learnable-depth on a Stable Diffusion pipeline: sampling their calibration latents, each prompt's
    /// batch of latents for the DDIM steps (conditional and unconditional together when guided). None for other models.
    /// </summary>
    private static IEnumerable<NetworkWork> CalibrationLatents(PruneRequest request)
    {
        if (PruneRunner.PipelineFolderOf(request) is null) yield break;
        int prompts = PruneRunner.CalibrationPromptCount(request);
        int perPrompt = Math.Max(1, PruneRunner.TeacherSamplesPerPromptOf(request, prompts));
        int steps = Math.Max(1, request.TeacherSampleSteps ?? PruneRunner.DefaultTeacherSampleSteps);
        bool guided = (request.TeacherGuidanceScale ?? PruneRunner.DefaultTeacherGuidanceScale) > 1;
        yield return new NetworkWork(perPrompt * (guided ? 2 : 1), (long)prompts * steps, 0,
            string.Create(CultureInfo.InvariantCulture, $"sampling {prompts} x {perPrompt} calibration latents, {steps} steps"));
    }

    // random subsets of at least two layers cannot outnumber the layer subsets there are
    private static long SubsetCap(int layers) => layers >= 62 ? long.MaxValue : Math.Max(0, (1L << layers) - 1 - layers);

    private static int TrainTimesteps(PruneRequest request)
    {
        string? path = request.SchedulerConfigPath ?? DiffusersModelLoader.FindSchedulerConfig(request.ModelPath);
        return path is null ? 1000 : SchedulerConfig.Load(path).NumTrainTimesteps;
    }

    /// <summary>
    /// Times one pass of <paramref name="model"/> of <paramref name="kind"/>: the median of <paramref name="runs"/> after a
    /// warm-up, without gradients and, for a backward, with one into the weights or (without weight gradients) only
    /// into the activations, as EcoDiff's gates take theirs. Gradients are cleared and settings restored afterwards.
    /// </summary>
    public static PassTimes Measure(DiffusionModel model, PassKind kind, int runs = 7, CancellationToken cancel = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(kind.Batch, 1);
        bool wasTraining = model.training;
        model.eval();
        var parameters = model.parameters().ToList();
        var requiresGrad = parameters.Select(p => p.requires_grad).ToArray();
        var device = parameters.FirstOrDefault()?.device ?? CPU;
        var generator = new Generator(0);
        using var sample = randn([kind.Batch, model.InChannels, model.SampleSize[0], model.SampleSize[^1]], generator: generator).to(device);
        using var timestep = full([kind.Batch], 500L, ScalarType.Int64, device: device);
        using var labels = model.NumClasses is int classes ? randint(0, classes, [kind.Batch], ScalarType.Int64, generator: generator).to(device) : null;
        try
        {
            double forward = Median(runs, cancel, () =>
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                model.Predict(sample, timestep, labels).sum().item<float>();
            });
            if (!kind.Backward) return new PassTimes(kind.Batch, forward, double.NaN);
            foreach (var p in parameters) p.requires_grad = kind.WeightGradients;
            double withBackward = Median(runs, cancel, () =>
            {
                using var scope = NewDisposeScope();
                var input = kind.WeightGradients ? sample : sample.detach().requires_grad_(true);
                model.Predict(input, timestep, labels).square().mean().backward();
                model.zero_grad();
            });
            return new PassTimes(kind.Batch, forward, withBackward);
        }
        finally
        {
            for (int i = 0; i < parameters.Count; i++) parameters[i].requires_grad = requiresGrad[i];
            model.zero_grad();
            model.train(wasTraining);
            NativeMemory.Trim();
        }
    }

    private static double Median(int runs, CancellationToken cancel, Action pass)
    {
        // Warm-up: the first passes of a process pay for allocations, kernel choice and the thread pool's start, and
        // can take twice a steady pass or more: at least three passes, on until the last two agree within 20% (at most 10).
        double previous = double.PositiveInfinity, last = 0;
        for (int i = 0; i < 10; i++)
        {
            cancel.ThrowIfCancellationRequested();
            var warm = Stopwatch.StartNew();
            pass();
            last = warm.Elapsed.TotalMilliseconds;
            if (i >= 2 && Math.Abs(last - previous) <= 0.2 * Math.Min(last, previous)) break;
            previous = last;
        }
        // a slow pass (a large batch) is timed fewer times: three are enough against a stray slow one
        var times = new double[last > 200 ? Math.Min(3, Math.Max(1, runs)) : Math.Max(1, runs)];
        for (int i = 0; i < times.Length; i++)
        {
            cancel.ThrowIfCancellationRequested();
            var clock = Stopwatch.StartNew();
            pass();
            times[i] = clock.Elapsed.TotalMilliseconds;
        }
        Array.Sort(times);
        return times[times.Length / 2];
    }

    /// <summary>
    /// The estimate for <paramref name="request"/>: its <see cref="Work"/> times the pass times <paramref name="times"/>
    /// gives for each batch size (measured with <see cref="Measure"/>, or cached by the caller), plus <see cref="Overhead"/>.
    /// </summary>
    public static PruneTimeEstimate Estimate(DiffusionModel model, PruneRequest request, Func<PassKind, PassTimes> times)
    {
        var work = Work(model, request);
        var measured = work.Select(w => times(w.Kind)).ToList();
        double ms = work.Zip(measured).Sum(p => p.First.Forwards * p.Second.ForwardMilliseconds + (p.First.Backwards > 0 ? p.First.Backwards * p.Second.BackwardMilliseconds : 0));
        return new PruneTimeEstimate(Overhead + TimeSpan.FromMilliseconds(ms), work, measured, CpuInfo.Read().Model, torch.get_num_threads());
    }

    /// <summary>A duration as people read it: 40 s, 3 min 20 s, 1 h 05 min.</summary>
    public static string Format(TimeSpan time) =>
        time.TotalSeconds < 60 ? string.Create(CultureInfo.InvariantCulture, $"{Math.Max(1, Math.Round(time.TotalSeconds)):0} s")
        : time.TotalHours < 1 ? string.Create(CultureInfo.InvariantCulture, $"{(int)time.TotalMinutes} min {time.Seconds:00} s")
        : string.Create(CultureInfo.InvariantCulture, $"{(int)time.TotalHours} h {time.Minutes:00} min");
}
