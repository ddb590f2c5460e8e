using DiffusionPrune.Models;

namespace DiffusionPrune.TextEncoding;

/// <summary>
/// The fields of Hugging Face's <c>CLIPTextConfig</c> that <see cref="CLIPTextModel"/> uses, same JSON names and
/// defaults (a text_encoder/config.json). Fields only training or pooling reads (dropouts, projection_dim,
/// initializer ranges, token ids) are ignored; the token ids live with the tokenizer.
/// </summary>
public sealed record CLIPTextConfig
{
    public const string ModelType = "clip_text_model";
    public const string Architecture = "CLIPTextModel";

    /// <summary>The activations Hugging Face's CLIP text configs use: OpenAI's sigmoid approximation and exact (erf) GELU.</summary>
    public static readonly string[] KnownActivations = ["quick_gelu", "gelu"];

    public int VocabSize { get; init; } = 49408;
    public int HiddenSize { get; init; } = 512;
    public int IntermediateSize { get; init; } = 2048;
    public int NumHiddenLayers { get; init; } = 12;
    public int NumAttentionHeads { get; init; } = 8;
    public int MaxPositionEmbeddings { get; init; } = 77;
    public string HiddenAct { get; init; } = "quick_gelu";
    public double LayerNormEps { get; init; } = 1e-5;

    public int HeadDim => HiddenSize / NumAttentionHeads;

    public static CLIPTextConfig FromJson(ConfigJson c)
    {
        // A whole CLIPModel config nests the text half under text_config; its weights are not a text_encoder's either.
        if (c.Has("text_config"))
            throw new ModelFormatException($"{c.Source} is a whole CLIP model's config (it has text_config); give the text_encoder/ folder of a pipeline instead.");
        string modelType = c.String("model_type", ModelType);
        if (modelType != ModelType)
            throw new ModelFormatException($"{c.Source} describes a '{modelType}' model, not a CLIP text encoder ('{ModelType}').");
        var architectures = c.StringArray("architectures", [Architecture]);
        if (architectures.Any(a => a != Architecture))
            throw new ModelFormatException($"{c.Source}: architecture '{string.Join(", ", architectures)}' is not supported; only {Architecture} " +
                "(Stable Diffusion 1.x / 2.x's text_encoder) is. CLIPTextModelWithProjection (SDXL's text_encoder_2) adds a projection this model does not have.");
        var config = new CLIPTextConfig
        {
            VocabSize = c.Int("vocab_size", 49408),
            HiddenSize = c.Int("hidden_size", 512),
            IntermediateSize = c.Int("intermediate_size", 2048),
            NumHiddenLayers = c.Int("num_hidden_layers", 12),
            NumAttentionHeads = c.Int("num_attention_heads", 8),
            MaxPositionEmbeddings = c.Int("max_position_embeddings", 77),
            HiddenAct = c.String("hidden_act", "quick_gelu"),
            LayerNormEps = c.Double("layer_norm_eps", 1e-5),
        };
        config.Validate(c.Source);
        return config;
    }

    public void Validate(string source = "config")
    {
        foreach (var (name, value) in new[] { ("vocab_size", VocabSize), ("hidden_size", HiddenSize), ("intermediate_size", IntermediateSize),
                     ("num_hidden_layers", NumHiddenLayers), ("num_attention_heads", NumAttentionHeads), ("max_position_embeddings", MaxPositionEmbeddings) })
            if (value < 1) throw new ModelFormatException($"{source}: {name} must be at least 1, not {value}.");
        if (HiddenSize % NumAttentionHeads != 0)
            throw new ModelFormatException($"{source}: hidden_size {HiddenSize} is not divisible by num_attention_heads {NumAttentionHeads}; each head needs an equal share of the width.");
        if (!KnownActivations.Contains(HiddenAct))
            throw new ModelFormatException($"{source}: hidden_act '{HiddenAct}' is not supported ({string.Join(", ", KnownActivations)}).");
        if (!(LayerNormEps > 0) || !double.IsFinite(LayerNormEps))
            throw new ModelFormatException($"{source}: layer_norm_eps must be a positive number, not {LayerNormEps}.");
    }
}
