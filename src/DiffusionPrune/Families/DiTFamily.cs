using DiffusionPrune.Export;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using DiffusionPrune.OnnxGraphs;
using DiffusionPrune.Pruning;

namespace DiffusionPrune.Families;

/// <summary>diffusers' <c>DiTTransformer2DModel</c>: class-conditional latent or pixel transformers with adaLN-Zero.</summary>
public sealed class DiTFamily : ModelFamily<DiTTransformer2DModel>
{
    public override string ClassName => DiTConfig.ClassName;
    public override string ShortName => "dit";

    public override DiffusionModel Create(ConfigJson config) => new DiTTransformer2DModel(DiTConfig.FromJson(config));

    public override ResourceEstimate EstimateResources(ConfigJson config) => DiTResources.Estimate(DiTConfig.FromJson(config));

    protected override DiTTransformer2DModel WithStructure(DiTTransformer2DModel model, ModelStructure structure) => new(model.Config with { Structure = structure });

    /// <remarks>Always class labels: unconditional sampling passes the null class (num_embeds_ada_norm).</remarks>
    protected override ConditioningInput ConditioningOf(DiTTransformer2DModel model) => new(ConditioningKind.ClassLabels);

    protected override void BuildOnnx(OnnxGraph graph, DiTTransformer2DModel model) => DiTOnnx.Build(graph, model);

    public override bool SupportsSharedQueryKeyInit => true;

    /// <summary>Whole transformer blocks; their attention and feed-forward have no residual of their own.</summary>
    protected override LayerCandidates LayerCandidatesOf(DiTTransformer2DModel model)
    {
        var layers = new List<LayerGroup>();
        var notRemovable = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (path, module) in model.named_modules())
        {
            switch (module)
            {
                case DiTBlock block:
                    // diffusers' output layer reads transformer_blocks.0.norm1.emb, so removing block 0 keeps it.
                    long saved = LayerGroup.ParametersOf(block) - (path == "transformer_blocks.0" ? LayerGroup.ParametersOf(block.Norm1.Emb) : 0);
                    layers.Add(new LayerGroup(path, LayerKind.TransformerBlock, block, saved, g => block.LayerGate = g));
                    break;
                case Attention or FeedForward:
                    notRemovable[path] = "it has no residual connection of its own (remove the transformer block that holds it instead)";
                    break;
            }
        }
        return new LayerCandidates(layers, notRemovable);
    }

    /// <summary>adaLN-Zero (DiT paper, section 3.2), optionally with shared query/key projections.</summary>
    protected override void InitializeForTraining(DiTTransformer2DModel model, bool sharedQueryKey) => model.InitializeForTraining(sharedQueryKey);
}
