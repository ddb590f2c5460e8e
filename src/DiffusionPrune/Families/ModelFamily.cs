using DiffusionPrune.Export;
using DiffusionPrune.Models;
using DiffusionPrune.OnnxGraphs;
using static TorchSharp.torch;

namespace DiffusionPrune.Families;

/// <summary>What a denoiser's forward takes besides the sample and the timestep, as cost, latency and ONNX need to know it.</summary>
public enum ConditioningKind
{
    /// <summary>Unconditional.</summary>
    None,

    /// <summary>Class indices [B] (int64).</summary>
    ClassLabels,

    /// <summary>Ready-made class embeddings [B, <see cref="ConditioningInput.EmbeddingDim"/>] (float32), diffusers' class_embed_type "identity".</summary>
    ClassEmbedding,

    /// <summary>
    /// Text-encoder states [B, <see cref="ConditioningInput.TextTokens"/>, <see cref="ConditioningInput.EmbeddingDim"/>] for
    /// cross-attention (a Stable Diffusion U-Net), plus SDXL's added conditions when <see cref="ConditioningInput.TextEmbedsDim"/> is set.
    /// </summary>
    TextStates,
}

/// <summary>
/// The conditioning input a loaded model needs: its kind and, for embeddings and text states, their width; for text
/// states also the token count fed (CLIP's 77 for Stable Diffusion) and SDXL's text_embeds width and number of time ids.
/// </summary>
public sealed record ConditioningInput(ConditioningKind Kind, int EmbeddingDim = 0, int TextTokens = 0, int TextEmbedsDim = 0, int TimeIds = 0)
{
    public static ConditioningInput None { get; } = new(ConditioningKind.None);

    /// <summary>
    /// A zero conditioning for a batch (class 0, a zero embedding, or zero text states and added conditions): what cost
    /// counting and probes feed.
    /// </summary>
    public Conditioning Zero(Tensor timestep, long batch, Device device) => Kind switch
    {
        ConditioningKind.ClassLabels => new(timestep, zeros([batch], ScalarType.Int64, device)),
        ConditioningKind.ClassEmbedding => new(timestep, zeros([batch, EmbeddingDim], device: device)),
        ConditioningKind.TextStates => new(timestep, EncoderHiddenStates: zeros([batch, TextTokens, EmbeddingDim], device: device),
            AddedConditions: TextEmbedsDim == 0 ? null : new Dictionary<string, Tensor>
            {
                [UNet2DConditionModel.TextEmbedsKey] = zeros([batch, TextEmbedsDim], device: device),
                [UNet2DConditionModel.TimeIdsKey] = zeros([batch, TimeIds], device: device),
            }),
        _ => new(timestep),
    };
}

/// <summary>
/// One diffusers model class, and everything the rest of the library needs to know about it: the one place that
/// switches on the model class. A new family is its model file plus a subclass of this registered in
/// <see cref="ModelFamilies"/> (docs/ARCHITECTURE.md).
/// </summary>
public abstract class ModelFamily
{
    /// <summary>diffusers' <c>_class_name</c> (e.g. "UNet2DModel").</summary>
    public abstract string ClassName { get; }

    /// <summary>The short name users type (<c>dprune train --arch unet</c>).</summary>
    public abstract string ShortName { get; }

    /// <summary>Whether <paramref name="model"/> belongs to this family.</summary>
    public abstract bool Owns(DiffusionModel model);

    /// <summary>Parses and validates the config (a pruned structure included) and builds the model with fresh weights.</summary>
    public abstract DiffusionModel Create(ConfigJson config);

    /// <summary>
    /// Parses and validates the config (a pruned structure included) and works out what the model needs, without
    /// building it: parameters, MACs and activation memory (<see cref="ResourceEstimate"/>).
    /// </summary>
    public abstract ResourceEstimate EstimateResources(ConfigJson config);

    /// <summary>The same model class and config with another structure (what structural surgery builds), fresh weights.</summary>
    public abstract DiffusionModel WithStructure(DiffusionModel model, ModelStructure structure);

    /// <summary>What the model's forward takes besides the sample and timestep.</summary>
    public abstract ConditioningInput ConditioningOf(DiffusionModel model);

    /// <summary>Adds the model's forward pass to an ONNX graph (inputs per <see cref="OnnxContract"/>).</summary>
    public abstract void BuildOnnx(OnnxGraph graph, DiffusionModel model);

    /// <summary>
    /// The whole layers pruning may remove from <paramref name="model"/> (each becomes exactly the identity), in module
    /// order, and the layers that exist but cannot be removed, with the reason (for error messages).
    /// </summary>
    public abstract LayerCandidates LayerCandidatesOf(DiffusionModel model);

    /// <summary>Renames keys of older checkpoints of this class to today's names before a strict load. Returns how many.</summary>
    public virtual int UpgradeWeights<T>(Dictionary<string, T> weights) => 0;

    /// <summary>Whether <see cref="InitializeForTraining"/> can share query and key projections (DiT's shared-qk init).</summary>
    public virtual bool SupportsSharedQueryKeyInit => false;

    /// <summary>Initialises a freshly built model for training from scratch where the family's paper prescribes it.</summary>
    public virtual void InitializeForTraining(DiffusionModel model, bool sharedQueryKey = false)
    {
        if (sharedQueryKey)
            throw new ArgumentException($"Shared query/key initialisation applies to DiT models, not {ClassName}.");
    }

    public override string ToString() => ClassName;
}

/// <summary>A model's removable layers (module order) and its other layers with why they cannot be removed.</summary>
public sealed record LayerCandidates(IReadOnlyList<Pruning.LayerGroup> Removable, IReadOnlyDictionary<string, string> NotRemovable);

/// <summary>A family whose models are all one C# class: the typed half of the plumbing.</summary>
public abstract class ModelFamily<TModel> : ModelFamily where TModel : DiffusionModel
{
    public sealed override bool Owns(DiffusionModel model) => model is TModel;
    public sealed override DiffusionModel WithStructure(DiffusionModel model, ModelStructure structure) => WithStructure(Typed(model), structure);
    public sealed override ConditioningInput ConditioningOf(DiffusionModel model) => ConditioningOf(Typed(model));
    public sealed override void BuildOnnx(OnnxGraph graph, DiffusionModel model) => BuildOnnx(graph, Typed(model));
    public sealed override void InitializeForTraining(DiffusionModel model, bool sharedQueryKey = false) => InitializeForTraining(Typed(model), sharedQueryKey);
    public sealed override LayerCandidates LayerCandidatesOf(DiffusionModel model) => LayerCandidatesOf(Typed(model));

    protected abstract TModel WithStructure(TModel model, ModelStructure structure);
    protected abstract ConditioningInput ConditioningOf(TModel model);
    protected abstract void BuildOnnx(OnnxGraph graph, TModel model);
    protected virtual void InitializeForTraining(TModel model, bool sharedQueryKey) => base.InitializeForTraining(model, sharedQueryKey);
    protected abstract LayerCandidates LayerCandidatesOf(TModel model);

    private TModel Typed(DiffusionModel model) => model as TModel
        ?? throw new ArgumentException($"{ClassName}'s family was asked about a {model.ClassName}.", nameof(model));
}
