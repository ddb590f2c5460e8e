using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using DiffusionPrune.OnnxGraphs;
using DiffusionPrune.Pruning;

namespace DiffusionPrune.Families;

/// <summary>
/// diffusers' <c>UNet2DConditionModel</c>: the text-conditioned latent U-Net of Stable Diffusion pipelines (a pipeline
/// folder loads through its <c>unet/</c>). Pruning sees its ResNet channels, the heads of every self- and cross-attention
/// and the GEGLU feed-forward neurons (<see cref="PrunableGroups"/>).
/// </summary>
public sealed class UNet2DConditionFamily : ModelFamily<UNet2DConditionModel>
{
    /// <summary>
    /// Text tokens that cost counting, probes and the resource estimate feed the cross-attention: CLIP's context length
    /// (the tokenizer's model_max_length), which every Stable Diffusion pipeline pads its prompts to.
    /// </summary>
    public const int TextTokens = 77;

    public override string ClassName => UNet2DConditionConfig.ClassName;
    public override string ShortName => "unet-cond";

    public override DiffusionModel Create(ConfigJson config) => new UNet2DConditionModel(UNet2DConditionConfig.FromJson(config));

    public override ResourceEstimate EstimateResources(ConfigJson config) => UNet2DConditionResources.Estimate(UNet2DConditionConfig.FromJson(config));

    protected override UNet2DConditionModel WithStructure(UNet2DConditionModel model, ModelStructure structure) => new(model.Config with { Structure = structure });

    /// <summary>SDXL's six time ids: original size (2), crop top-left (2) and target size (2).</summary>
    public const int SdxlTimeIds = 6;

    /// <remarks>
    /// Text states as wide as the cross-attention (all blocks read the same width in the pipelines this library loads),
    /// and, when addition_embed_type is "text_time", SDXL's <see cref="SdxlTimeIds"/> time ids with text_embeds filling the
    /// rest of projection_class_embeddings_input_dim (SDXL: 2816 = 1280 pooled text + 6 x 256). The config does not say
    /// how many ids there are, so a text_time U-Net with another count is refused here rather than fed wrong shapes.
    /// </remarks>
    protected override ConditioningInput ConditioningOf(UNet2DConditionModel model)
    {
        var c = model.Config;
        if (c.ClassEmbedType is not null || c.NumClassEmbeds is not null)
            throw new NotSupportedException($"This {ClassName} takes class labels besides text (class_embed_type or num_class_embeds); pruning, cost " +
                "counting and latency support the text-to-image U-Nets of Stable Diffusion pipelines only.");
        int textWidth = c.CrossAttentionDim[^1];
        if (c.AdditionEmbedType != "text_time")
            return new ConditioningInput(ConditioningKind.TextStates, textWidth, TextTokens);
        int projection = c.ProjectionClassEmbeddingsInputDim!.Value, perId = c.AdditionTimeEmbedDim!.Value;
        int textEmbeds = projection - SdxlTimeIds * perId;
        if (textEmbeds < 1)
            throw new NotSupportedException($"This {ClassName}'s projection_class_embeddings_input_dim {projection} leaves no room for text_embeds beside " +
                $"SDXL's {SdxlTimeIds} time ids of {perId}; only SDXL's text_time layout is supported.");
        return new ConditioningInput(ConditioningKind.TextStates, textWidth, TextTokens, textEmbeds, SdxlTimeIds);
    }

    /// <summary>The graph a Stable Diffusion ONNX pipeline's unet/model.onnx holds: <see cref="UNet2DConditionOnnx"/>.</summary>
    protected override void BuildOnnx(OnnxGraph graph, UNet2DConditionModel model) => UNet2DConditionOnnx.Build(graph, model);

    /// <summary>
    /// Every residual ResNet block with in == out channels (the SD U-Net's ResNets never resample) and every whole
    /// Transformer2DModel (residual: removed, it is the identity). The attentions and feed-forwards inside a transformer
    /// are not removable on their own: they have no residual of their own.
    /// </summary>
    protected override LayerCandidates LayerCandidatesOf(UNet2DConditionModel model)
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
                case Transformer2DModel transformer:
                    layers.Add(new LayerGroup(path, LayerKind.TransformerBlock, transformer, LayerGroup.ParametersOf(transformer), g => transformer.LayerGate = g));
                    break;
                case Attention or GegluFeedForward:
                    notRemovable[path] = "it has no residual connection of its own (it lives inside a transformer block)";
                    break;
            }
        }
        return new LayerCandidates(layers, notRemovable);
    }
}
