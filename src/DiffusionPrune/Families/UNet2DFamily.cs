using DiffusionPrune.Export;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using DiffusionPrune.OnnxGraphs;
using DiffusionPrune.Pruning;
using static TorchSharp.torch;

namespace DiffusionPrune.Families;

/// <summary>diffusers' <c>UNet2DModel</c>: unconditional or class-conditional pixel-space U-Nets.</summary>
public sealed class UNet2DFamily : ModelFamily<UNet2DModel>
{
    public override string ClassName => UNet2DConfig.ClassName;
    public override string ShortName => "unet";

    public override DiffusionModel Create(ConfigJson config) => new UNet2DModel(UNet2DConfig.FromJson(config));

    public override ResourceEstimate EstimateResources(ConfigJson config) => UNet2DResources.Estimate(UNet2DConfig.FromJson(config));

    protected override UNet2DModel WithStructure(UNet2DModel model, ModelStructure structure) => new(model.Config with { Structure = structure });

    /// <remarks>class_embed_type "identity" takes a ready-made embedding as wide as the time embedding; the others take indices.</remarks>
    protected override ConditioningInput ConditioningOf(UNet2DModel model) => model.Config.ClassEmbedType switch
    {
        _ when model.ClassEmbedding is null => ConditioningInput.None,
        "identity" => new ConditioningInput(ConditioningKind.ClassEmbedding, model.Config.TimeEmbedDim),
        _ => new ConditioningInput(ConditioningKind.ClassLabels),
    };

    protected override void BuildOnnx(OnnxGraph graph, UNet2DModel model) => UNet2DOnnx.Build(graph, model);

    /// <summary>Every residual ResNet block with in == out channels and no resampling, and every attention block.</summary>
    protected override LayerCandidates LayerCandidatesOf(UNet2DModel model)
    {
        var layers = new List<LayerGroup>();
        var notRemovable = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (path, module) in model.named_modules())
        {
            switch (module)
            {
                case ResnetBlock2D resnet when resnet.Resamples:
                    notRemovable[path] = "it up- or downsamples, so it is not the identity when removed";
                    break;
                case ResnetBlock2D resnet when resnet.InChannels != resnet.OutChannels:
                    notRemovable[path] = $"its input has {resnet.InChannels} channels but its output {resnet.OutChannels}, so it cannot become the identity";
                    break;
                case ResnetBlock2D resnet:
                    layers.Add(new LayerGroup(path, LayerKind.ResnetBlock, resnet, LayerGroup.ParametersOf(resnet), g => resnet.LayerGate = g));
                    break;
                case Attention attention when attention.ResidualConnection:
                    layers.Add(new LayerGroup(path, LayerKind.AttentionBlock, attention, LayerGroup.ParametersOf(attention), g => attention.LayerGate = g));
                    break;
                case Attention:
                    notRemovable[path] = "it has no residual connection of its own";
                    break;
            }
        }
        return new LayerCandidates(layers, notRemovable);
    }

    public override int UpgradeWeights<T>(Dictionary<string, T> weights) => DiffusersModelLoader.RenameLegacyAttentionKeys(weights);
}
