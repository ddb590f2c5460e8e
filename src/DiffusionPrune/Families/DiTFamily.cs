using DiffusionPrune.Export;
using DiffusionPrune.Models;

namespace DiffusionPrune.Families;

/// <summary>diffusers' <c>DiTTransformer2DModel</c>: class-conditional latent or pixel transformers with adaLN-Zero.</summary>
public sealed class DiTFamily : ModelFamily<DiTTransformer2DModel>
{
    public override string ClassName => DiTConfig.ClassName;
    public override string ShortName => "dit";

    public override DiffusionModel Create(ConfigJson config) => new DiTTransformer2DModel(DiTConfig.FromJson(config));

    protected override DiTTransformer2DModel WithStructure(DiTTransformer2DModel model, ModelStructure structure) => new(model.Config with { Structure = structure });

    /// <remarks>Always class labels: unconditional sampling passes the null class (num_embeds_ada_norm).</remarks>
    protected override ConditioningInput ConditioningOf(DiTTransformer2DModel model) => new(ConditioningKind.ClassLabels);

    protected override void BuildOnnx(OnnxGraph graph, DiTTransformer2DModel model) => DiTOnnx.Build(graph, model);

    public override bool SupportsSharedQueryKeyInit => true;

    /// <summary>adaLN-Zero (DiT paper, section 3.2), optionally with shared query/key projections.</summary>
    protected override void InitializeForTraining(DiTTransformer2DModel model, bool sharedQueryKey) => model.InitializeForTraining(sharedQueryKey);
}
