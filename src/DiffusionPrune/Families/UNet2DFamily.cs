using DiffusionPrune.Export;
using DiffusionPrune.Models;
using static TorchSharp.torch;

namespace DiffusionPrune.Families;

/// <summary>diffusers' <c>UNet2DModel</c>: unconditional or class-conditional pixel-space U-Nets.</summary>
public sealed class UNet2DFamily : ModelFamily<UNet2DModel>
{
    public override string ClassName => UNet2DConfig.ClassName;
    public override string ShortName => "unet";

    public override DiffusionModel Create(ConfigJson config) => new UNet2DModel(UNet2DConfig.FromJson(config));

    protected override UNet2DModel WithStructure(UNet2DModel model, ModelStructure structure) => new(model.Config with { Structure = structure });

    /// <remarks>class_embed_type "identity" takes a ready-made embedding as wide as the time embedding; the others take indices.</remarks>
    protected override ConditioningInput ConditioningOf(UNet2DModel model) => model.Config.ClassEmbedType switch
    {
        _ when model.ClassEmbedding is null => ConditioningInput.None,
        "identity" => new ConditioningInput(ConditioningKind.ClassEmbedding, model.Config.TimeEmbedDim),
        _ => new ConditioningInput(ConditioningKind.ClassLabels),
    };

    protected override void BuildOnnx(OnnxGraph graph, UNet2DModel model) => UNet2DOnnx.Build(graph, model);

    public override int UpgradeWeights(Dictionary<string, Tensor> weights) => DiffusersModelLoader.RenameLegacyAttentionKeys(weights);
}
