using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning.Layers;

/// <summary>
/// A seeded calibration set for layer criteria: K noises (and class labels), the full model's sampling trajectory from
/// them, and at every step the input x_t and the full model's prediction eps_full(x_t, t). Measures what removing a set
/// of layers costs, with the model's layer gates (the removed layers become exactly the identity):
/// <see cref="OutputLoss"/> (LAPTOP-Diff) and <see cref="FinalLatents"/> (LD-Pruner). The model is left ungated.
/// </summary>
public sealed class LayerCalibration : IDisposable
{
    private readonly DiffusionModel _model;
    private readonly IDiffusionScheduler _scheduler;
    private readonly long _seed;
    private readonly Tensor _noise;
    private readonly Tensor? _labels;
    private readonly Tensor? _promptStates; // [K, tokens, D]: sample k's prompt, for text-conditioned models
    private readonly List<(Tensor Sample, long Timestep, Tensor Prediction)> _steps = [];
    private readonly Tensor _gateZero;

    /// <param name="text">
    /// For a text-conditioned model: the calibration prompts' states; sample k follows prompt k mod P, predicted from the
    /// prompt alone (no guidance, as class-conditional models here are predicted from their labels alone).
    /// </param>
    public LayerCalibration(DiffusionModel model, IDiffusionScheduler scheduler, int steps, int samples, long seed, TextCalibration? text = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(scheduler);
        if (steps < 1) throw new ArgumentException($"A layer criterion needs at least one sampling step (got {steps}).", nameof(steps));
        if (samples < 2) throw new ArgumentException($"A layer criterion needs at least two calibration samples (got {samples}); the latent statistics are over samples.", nameof(samples));
        _model = model;
        _scheduler = scheduler;
        _seed = seed;
        model.eval();
        var device = model.parameters().FirstOrDefault()?.device ?? CPU;
        var generator = new Generator((ulong)seed);
        _noise = randn([samples, model.InChannels, model.SampleSize[0], model.SampleSize[^1]], generator: generator).to(device).DetachFromDisposeScope();
        if (model.NumClasses is int classes)
            _labels = randint(0, classes, [samples], ScalarType.Int64, generator: generator).to(device).DetachFromDisposeScope();
        bool textConditioned = Families.ModelFamilies.ConditioningOf(model).Kind == Families.ConditioningKind.TextStates;
        if (textConditioned != text is not null)
            throw new ArgumentException(textConditioned
                ? $"A {model.ClassName} calibrates on prompts, which need the text encoder: give the Stable Diffusion pipeline folder rather than its unet/ alone."
                : $"Calibration prompts are for text-conditioned models; {model.ClassName} takes none.");
        if (text is not null)
        {
            using var promptOfSample = arange(samples, ScalarType.Int64) % text.Prompts.Count;
            _promptStates = text.Embeddings.PromptEmbeds.index_select(0, promptOfSample.to(text.Embeddings.PromptEmbeds.device)).to(device).DetachFromDisposeScope();
        }
        _gateZero = zeros(1, device: device).DetachFromDisposeScope();
        scheduler.SetTimesteps(steps);
        Timesteps = scheduler.Timesteps;
        Final = Trajectory([], record: true);
    }

    /// <summary>The sampler's timesteps of the calibration trajectory.</summary>
    public long[] Timesteps { get; }

    /// <summary>Number of calibration samples.</summary>
    public long Samples => _noise.shape[0];

    /// <summary>The full model's final latents [K, C, H, W].</summary>
    public Tensor Final { get; }

    /// <summary>
    /// Mean over samples, steps and elements of (eps_full(x_t, t) - eps_without(x_t, t))^2 on the full model's
    /// trajectory, with the layers of <paramref name="removed"/> made the identity.
    /// </summary>
    public double OutputLoss(IReadOnlyCollection<LayerGroup> removed, CancellationToken cancel = default)
    {
        using var gates = Remove(removed);
        double total = 0;
        foreach (var (sample, timestep, prediction) in _steps)
        {
            cancel.ThrowIfCancellationRequested();
            total += GcPause.Run(() =>
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                var t = tensor(timestep, device: sample.device);
                var without = Predict(sample, t);
                return (without - prediction).square().mean().cpu().item<float>();
            });
        }
        double loss = total / _steps.Count;
        if (!double.IsFinite(loss))
            throw new NonFiniteValueException($"The output loss without [{string.Join(", ", removed.Select(l => l.Path))}] is {loss}; the model's predictions are not finite.");
        return loss;
    }

    /// <summary>The final latents [K, C, H, W] sampled from the same noise with the layers of <paramref name="removed"/> made the identity. The caller owns them.</summary>
    public Tensor FinalLatents(IReadOnlyCollection<LayerGroup> removed, CancellationToken cancel = default)
    {
        using var gates = Remove(removed);
        return Trajectory(removed, record: false, cancel);
    }

    private Tensor Trajectory(IReadOnlyCollection<LayerGroup> removed, bool record, CancellationToken cancel = default)
    {
        // Stochastic samplers draw their variance noise from a generator seeded the same for every trajectory.
        var generator = new Generator((ulong)_seed ^ 0x5DEECE66DUL);
        _scheduler.SetTimesteps(Timesteps.Length);
        var latents = _noise;
        foreach (long timestep in Timesteps)
        {
            cancel.ThrowIfCancellationRequested();
            var current = latents;
            var (next, prediction) = GcPause.Run(() =>
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                var t = tensor(timestep, device: current.device);
                var eps = Predict(current, t);
                var step = _scheduler.Step(eps, timestep, current, generator: generator).PrevSample;
                return (step.MoveToOuterDisposeScope(), record ? eps.MoveToOuterDisposeScope() : null);
            });
            if (record) _steps.Add((current, timestep, prediction!));
            else if (!ReferenceEquals(current, _noise)) current.Dispose();
            latents = next;
        }
        NativeMemory.Trim();
        using var check = isfinite(latents).all();
        if (!check.item<bool>())
            throw new NonFiniteValueException($"The final latents without [{string.Join(", ", removed.Select(l => l.Path))}] are not finite.");
        return latents;
    }

    /// <summary>The model's prediction for the calibration samples, conditioned on their labels or prompts.</summary>
    private Tensor Predict(Tensor sample, Tensor t) => _promptStates is null
        ? _model.Predict(sample, t, _labels)
        : _model.Predict(sample, new Conditioning(t, EncoderHiddenStates: _promptStates));

    private static LayerGates None { get; } = new([]);

    private LayerGates Remove(IReadOnlyCollection<LayerGroup> removed)
    {
        if (removed.Count == 0) return None;
        foreach (var layer in removed) layer.ApplyMask(_gateZero);
        return new LayerGates(removed);
    }

    public void Dispose()
    {
        foreach (var (sample, _, prediction) in _steps)
        {
            if (!ReferenceEquals(sample, _noise)) sample.Dispose();
            prediction.Dispose();
        }
        _steps.Clear();
        Final.Dispose();
        _noise.Dispose();
        _labels?.Dispose();
        _promptStates?.Dispose();
        _gateZero.Dispose();
    }

    /// <summary>Clears the gates of the removed layers when disposed.</summary>
    private sealed class LayerGates(IReadOnlyCollection<LayerGroup> layers) : IDisposable
    {
        public void Dispose()
        {
            foreach (var layer in layers) layer.ClearMask();
        }
    }
}
