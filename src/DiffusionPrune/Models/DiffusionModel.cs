using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>
/// The one denoiser interface everything else uses: (sample, timestep, conditioning) -> prediction.
/// Implemented by every model class we load; module fields are named as diffusers' state-dict keys.
/// </summary>
public abstract class DiffusionModel : nn.Module
{
    /// <remarks>
    /// The first model a process builds makes sure this CPU's kernels compute right (<see cref="Runtime.NumericsGuard"/>:
    /// a cached per-machine decision, or a sub-second op check), so every face (CLI, Studio, tests) runs with the
    /// workaround where a CPU needs it before any model computes.
    /// </remarks>
    protected DiffusionModel(string name) : base(name)
    {
        Runtime.NumericsGuard.EnsureDefault();
    }

    /// <summary>diffusers class name written to config.json.</summary>
    public abstract string ClassName { get; }
    public abstract int InChannels { get; }

    /// <summary>Channels the network outputs (2 x in for learned-sigma models).</summary>
    public abstract int OutChannels { get; }

    /// <summary>Height and width of the samples the model was built for.</summary>
    public abstract int[] SampleSize { get; }

    /// <summary>Number of real classes for class-conditional models, else null.</summary>
    public abstract int? NumClasses { get; }

    /// <summary>The label that means "no class" (classifier-free guidance), when the model has one.</summary>
    public virtual int? NullClass => null;

    /// <summary>Whether the extra output channels are a learned variance (DiT with learned sigma).</summary>
    public bool LearnedSigma => OutChannels == 2 * InChannels;

    public abstract ModelStructure Structure { get; }

    /// <summary>The model's config as diffusers writes it (plus our pruned widths, if any).</summary>
    public abstract JsonObject ConfigToJson();

    /// <summary>Raw network output [B, OutChannels, H, W] for a sample and whatever conditions it (<see cref="Conditioning"/>).</summary>
    public abstract Tensor Forward(Tensor sample, Conditioning conditioning);

    /// <summary>
    /// While set, receives each block's output during <see cref="Forward(Tensor, Conditioning)"/>, named by the block's
    /// path (<c>down_blocks.0</c>, <c>mid_block</c>, <c>up_blocks.1</c>, <c>transformer_blocks.3</c>): the features
    /// distillation matches between a student and its teacher. Pruning keeps block outputs' widths, so the same name has
    /// the same shape in both; a removed block reports nothing.
    /// </summary>
    public Action<string, Tensor>? FeatureTap { get; set; }

    /// <summary>Passes a block's output to <see cref="FeatureTap"/> and returns it.</summary>
    protected Tensor Tap(string block, Tensor output)
    {
        FeatureTap?.Invoke(block, output);
        return output;
    }

    /// <summary>Raw network output for the timestep and class-label conditioning of the unconditional and class-conditional families.</summary>
    public Tensor Forward(Tensor sample, Tensor timestep, Tensor? classLabels = null) => Forward(sample, new Conditioning(timestep, classLabels));

    /// <summary>The prediction a scheduler consumes: the first InChannels of the output (drops learned sigma).</summary>
    public Tensor Predict(Tensor sample, Conditioning conditioning)
    {
        var output = Forward(sample, conditioning);
        return LearnedSigma ? output[.., ..InChannels] : output;
    }

    /// <summary><see cref="Predict(Tensor, Conditioning)"/> with a timestep and optional class labels.</summary>
    public Tensor Predict(Tensor sample, Tensor timestep, Tensor? classLabels = null) => Predict(sample, new Conditioning(timestep, classLabels));

    public long ParameterCount() => parameters().Sum(p => p.numel());

    /// <summary>Expands a scalar or [1] timestep to one per batch element, as diffusers does.</summary>
    protected static Tensor BatchTimesteps(Tensor timestep, long batch, Device device)
    {
        var t = timestep.dim() == 0 ? timestep.unsqueeze(0) : timestep;
        t = t.to(device);
        if (t.shape[0] == batch) return t;
        if (t.shape[0] != 1)
            throw new ArgumentException($"timestep has {t.shape[0]} entries but the batch has {batch}.");
        return t.expand(batch);
    }
}
