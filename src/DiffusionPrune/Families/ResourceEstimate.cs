using System.Globalization;
using DiffusionPrune.Runtime;

namespace DiffusionPrune.Families;

/// <summary>
/// What a model needs, worked out from its config alone, before any tensor exists: parameters, MACs per forward at the
/// model's sample size, and float32 activation memory per sample (what one inference forward holds, and what one
/// training step holds with its backward). Each family computes it by walking its architecture as its forward does
/// (<see cref="ModelFamily.EstimateResources"/>); tests hold parameters and MACs equal to the built model's.
/// </summary>
public sealed record ResourceEstimate(
    string ClassName, int[] SampleSize, long Parameters, long Macs, long ForwardActivationBytesPerSample, long TrainingActivationBytesPerSample, long SampleBytes)
{
    /// <summary>float32 weights.</summary>
    public long ParameterBytes => Scale(Parameters, sizeof(float));

    /// <summary>Sampling or evaluating: the weights and one forward's live activations.</summary>
    public ResourceNeed Inference(int batch) => new($"inference at batch {batch}", ParameterBytes, Scale(ForwardActivationBytesPerSample, batch));

    /// <summary>Training or fine-tuning with AdamW and an EMA copy: weights, gradients, two moments and the EMA (5x the weights) and the saved activations.</summary>
    public ResourceNeed Training(int batch) => new($"a training step at batch {batch}", Scale(ParameterBytes, 5), Scale(TrainingActivationBytesPerSample, batch));

    /// <summary>Gradients of a loss with respect to the weights, without an optimizer (Taylor scores): weights, gradients and the saved activations.</summary>
    public ResourceNeed Gradients(int batch) => new($"a gradient at batch {batch}", Scale(ParameterBytes, 2), Scale(TrainingActivationBytesPerSample, batch));

    /// <summary>
    /// An EcoDiff step (or any mask or gate learning over a frozen model): the weights, one time step's saved activations
    /// (time-step gradient checkpointing recomputes the others; without it every step's) and the trajectory's latents
    /// with their gradients.
    /// </summary>
    public ResourceNeed MaskLearning(int batch, int steps, bool checkpointing = true) => new(
        $"a mask-learning step at batch {batch} over {steps} steps{(checkpointing ? "" : " without checkpointing")}",
        ParameterBytes, Add(Scale(Scale(TrainingActivationBytesPerSample, batch), checkpointing ? 1 : Math.Max(1, steps)),
            Scale(Scale(SampleBytes, batch), 2L * (steps + 1))));

    /// <summary>Distillation: this model trains while <paramref name="teacher"/> runs forward beside it.</summary>
    public ResourceNeed Distillation(ResourceEstimate teacher, int batch) => new($"a distillation step at batch {batch}",
        Add(Scale(ParameterBytes, 5), teacher.ParameterBytes), Add(Scale(TrainingActivationBytesPerSample, batch), Scale(teacher.ForwardActivationBytesPerSample, batch)));

    /// <summary>bytes x factor, saturating at long.MaxValue (never wrapping to a negative that would pass a check); negative counts are refused.</summary>
    internal static long Scale(long bytes, long factor)
    {
        if (bytes < 0 || factor < 0) throw new ResourceLimitException($"A resource count is negative ({bytes} x {factor}); the config is not a model that can be built.");
        return factor != 0 && bytes > long.MaxValue / factor ? long.MaxValue : bytes * factor;
    }

    /// <summary>a + b, saturating at long.MaxValue.</summary>
    internal static long Add(long a, long b) => a > long.MaxValue - b ? long.MaxValue : a + b;
}

/// <summary>Memory one workload needs: the weights (and their training state) plus activations.</summary>
public sealed record ResourceNeed(string Workload, long WeightBytes, long ActivationBytes)
{
    public long TotalBytes => ResourceEstimate.Add(WeightBytes, ActivationBytes);

    /// <summary>"3.21 GiB (weights 3.00 GiB + activations 0.21 GiB)".</summary>
    public string Describe() =>
        $"{MemoryLimit.Format(TotalBytes)} (weights {MemoryLimit.Format(WeightBytes)} + activations {MemoryLimit.Format(ActivationBytes)})";

    /// <summary>
    /// Refuses, in one line naming the estimate and the limit, a workload that needs more than the memory limit
    /// (<see cref="MemoryLimit.Current"/>: <c>--max-memory</c>, <c>DPRUNE_MAX_MEMORY</c> or the memory available now).
    /// </summary>
    public void EnsureFits(string what)
    {
        var (limit, source) = MemoryLimit.Current();
        if (TotalBytes <= limit) return;
        throw new ResourceLimitException(string.Create(CultureInfo.InvariantCulture,
            $"{what}: {Workload} needs about {Describe()}, more than the {MemoryLimit.Format(limit)} limit ({source}); nothing was allocated. Use a smaller model or batch, or raise --max-memory if the estimate is too cautious."));
    }
}

/// <summary>
/// The running sums of a family's walk through its forward for one sample: parameters, MACs counted as
/// <see cref="Analysis.ModelCost"/> counts them (convolutions, linear layers, the two attention matmuls) and the
/// elements of every intermediate tensor the forward makes.
/// </summary>
public sealed class CostTally
{
    public long Parameters { get; private set; }
    public long Macs { get; private set; }
    public long SavedElements { get; private set; }

    /// <summary>Weights of a layer that does no counted multiply-accumulates (norms, embedding tables).</summary>
    public void Weights(long count) => Parameters = checked(Parameters + count);

    /// <summary>
    /// The most elements alive at once in an inference forward: as <see cref="SavedElements"/>, except that a
    /// <see cref="Layer"/>'s intermediates are freed when it returns (<c>Models.Layers.LayerScope</c>).
    /// </summary>
    public long PeakLiveElements { get; private set; }

    private long _live;

    /// <summary>An intermediate tensor of <paramref name="elements"/> elements.</summary>
    public void Tensor(long elements)
    {
        SavedElements = checked(SavedElements + elements);
        _live = checked(_live + elements);
        PeakLiveElements = Math.Max(PeakLiveElements, _live);
    }

    /// <summary>
    /// A layer that runs in a dispose scope of its own: what <paramref name="body"/> counts is alive while it runs, then
    /// only its output (<paramref name="outputElements"/>) stays. Training still keeps what backward needs of it.
    /// </summary>
    public void Layer(long outputElements, Action body)
    {
        long before = _live;
        body();
        _live = checked(before + outputElements);
        PeakLiveElements = Math.Max(PeakLiveElements, _live);
    }

    /// <summary>A convolution: k x k kernel, output h x w.</summary>
    public void Conv(long inChannels, long outChannels, long kernel, long height, long width, bool bias = true)
    {
        Weights(checked(outChannels * inChannels * kernel * kernel + (bias ? outChannels : 0)));
        Macs = checked(Macs + height * width * outChannels * inChannels * kernel * kernel);
        Tensor(checked(outChannels * height * width));
    }

    /// <summary>A linear layer applied to <paramref name="tokens"/> vectors; <paramref name="sharedWeights"/>: a layer counted before, run again.</summary>
    public void Linear(long tokens, long inFeatures, long outFeatures, bool bias = true, bool sharedWeights = false)
    {
        if (!sharedWeights) Weights(checked(inFeatures * outFeatures + (bias ? outFeatures : 0)));
        Macs = checked(Macs + tokens * inFeatures * outFeatures);
        Tensor(checked(tokens * outFeatures));
    }

    /// <summary>Scaled dot-product attention over <paramref name="tokens"/> tokens (its own q/k/v/out projections are counted by the caller).</summary>
    public void AttentionCore(long tokens, long heads, long headDim)
    {
        Macs = checked(Macs + 2 * heads * tokens * tokens * headDim);
        // the fused CPU kernel keeps a row statistic per head and token beside its output, not the N x N scores
        Tensor(checked(tokens * heads * headDim + tokens * heads));
    }

    /// <summary>
    /// Attention of <paramref name="queryTokens"/> queries over <paramref name="keyTokens"/> keys (cross-attention to text
    /// states); <see cref="AttentionCore"/> is the self-attention case.
    /// </summary>
    public void CrossAttentionCore(long queryTokens, long keyTokens, long heads, long headDim)
    {
        Macs = checked(Macs + 2 * heads * queryTokens * keyTokens * headDim);
        Tensor(checked(queryTokens * heads * headDim + queryTokens * heads));
    }

    /// <summary>
    /// Temporaries the walk does not name (broadcast products, copies made by reshapes, allocator slack): measured peak
    /// RSS was 1.27-1.64x the named intermediates when sampling the defaults (docs/BENCHMARKS.md, "Resource estimate").
    /// </summary>
    public const double UnnamedTemporaries = 1.5;

    /// <summary>
    /// The estimate for a model whose sample is <paramref name="sampleElements"/> floats. A forward keeps every intermediate
    /// until its step's dispose scope ends, except inside the layers the walk marks as <see cref="Layer"/>s, so inference
    /// holds <see cref="PeakLiveElements"/>; training holds every intermediate (<see cref="SavedElements"/>, a cautious
    /// bound on what backward saves) and their gradients during the backward.
    /// </summary>
    public ResourceEstimate ToEstimate(string className, int[] sampleSize, long sampleElements)
    {
        long forward = checked((long)(PeakLiveElements * sizeof(float) * UnnamedTemporaries));
        long saved = checked((long)(SavedElements * sizeof(float) * UnnamedTemporaries));
        return new(className, sampleSize, Parameters, Macs, forward, checked(2 * saved), checked(sampleElements * sizeof(float)));
    }
}
