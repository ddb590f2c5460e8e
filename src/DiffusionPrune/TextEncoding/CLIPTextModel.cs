using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.TextEncoding;

/// <summary>Hugging Face's <c>CLIPTextEmbeddings</c>: token embedding plus a learned absolute position embedding.</summary>
public sealed class CLIPTextEmbeddings : nn.Module<Tensor, Tensor>
{
    private readonly Embedding token_embedding;
    private readonly Embedding position_embedding;

    public CLIPTextEmbeddings(CLIPTextConfig config) : base(nameof(CLIPTextEmbeddings))
    {
        token_embedding = nn.Embedding(config.VocabSize, config.HiddenSize);
        position_embedding = nn.Embedding(config.MaxPositionEmbeddings, config.HiddenSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds)
    {
        long length = inputIds.shape[1];
        var positionIds = arange(length, dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0); // [1, S]
        return token_embedding.call(inputIds) + position_embedding.call(positionIds); // [B, S, D]
    }
}

/// <summary>
/// Hugging Face's <c>CLIPAttention</c> with the causal mask the text model always applies: each token attends to
/// itself and the tokens before it, so a prompt's states do not depend on the padding after it.
/// </summary>
public sealed class CLIPAttention : nn.Module<Tensor, Tensor>
{
    private readonly Linear q_proj;
    private readonly Linear k_proj;
    private readonly Linear v_proj;
    private readonly Linear out_proj;
    private readonly int _heads, _headDim;

    public CLIPAttention(CLIPTextConfig config) : base(nameof(CLIPAttention))
    {
        int dim = config.HiddenSize;
        q_proj = nn.Linear(dim, dim);
        k_proj = nn.Linear(dim, dim);
        v_proj = nn.Linear(dim, dim);
        out_proj = nn.Linear(dim, dim);
        (_heads, _headDim) = (config.NumAttentionHeads, config.HeadDim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hiddenStates)
    {
        long batch = hiddenStates.shape[0];
        // [B, S, heads * headDim] -> [B, heads, S, headDim]
        var query = q_proj.call(hiddenStates).view(batch, -1, _heads, _headDim).transpose(1, 2);
        var key = k_proj.call(hiddenStates).view(batch, -1, _heads, _headDim).transpose(1, 2);
        var value = v_proj.call(hiddenStates).view(batch, -1, _heads, _headDim).transpose(1, 2);
        // Scale headDim^-0.5, as CLIPAttention's; is_causal builds the same lower-triangular mask as _create_4d_causal_attention_mask.
        var attended = nn.functional.scaled_dot_product_attention(query, key, value, null, 0.0, true);
        return out_proj.call(attended.transpose(1, 2).reshape(batch, -1, _heads * _headDim));
    }
}

/// <summary>Hugging Face's <c>CLIPMLP</c>: fc1, the configured activation, fc2.</summary>
public sealed class CLIPMLP : nn.Module<Tensor, Tensor>
{
    private readonly Linear fc1;
    private readonly Linear fc2;
    private readonly string _activation;

    public CLIPMLP(CLIPTextConfig config) : base(nameof(CLIPMLP))
    {
        fc1 = nn.Linear(config.HiddenSize, config.IntermediateSize);
        fc2 = nn.Linear(config.IntermediateSize, config.HiddenSize);
        _activation = config.HiddenAct;
        RegisterComponents();
    }

    public override Tensor forward(Tensor hiddenStates)
    {
        var hidden = fc1.call(hiddenStates);
        hidden = _activation switch
        {
            // OpenAI's QuickGELU, which the released CLIP weights were trained with: x * sigmoid(1.702 x).
            "quick_gelu" => hidden * sigmoid(hidden * 1.702),
            "gelu" => nn.functional.gelu(hidden),
            _ => throw new ModelFormatException($"hidden_act '{_activation}' is not supported ({string.Join(", ", CLIPTextConfig.KnownActivations)})."),
        };
        return fc2.call(hidden);
    }
}

/// <summary>Hugging Face's <c>CLIPEncoderLayer</c>: pre-LayerNorm self-attention and MLP, each added back to its input.</summary>
public sealed class CLIPEncoderLayer : nn.Module<Tensor, Tensor>
{
    private readonly CLIPAttention self_attn;
    private readonly LayerNorm layer_norm1;
    private readonly CLIPMLP mlp;
    private readonly LayerNorm layer_norm2;

    public CLIPEncoderLayer(CLIPTextConfig config) : base(nameof(CLIPEncoderLayer))
    {
        self_attn = new CLIPAttention(config);
        layer_norm1 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        mlp = new CLIPMLP(config);
        layer_norm2 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hiddenStates)
    {
        hiddenStates = hiddenStates + self_attn.call(layer_norm1.call(hiddenStates));
        return hiddenStates + mlp.call(layer_norm2.call(hiddenStates));
    }
}

/// <summary>Hugging Face's <c>CLIPEncoder</c>: the stack of layers (<c>layers.N</c>).</summary>
public sealed class CLIPEncoder : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<CLIPEncoderLayer> layers;

    public CLIPEncoder(CLIPTextConfig config) : base(nameof(CLIPEncoder))
    {
        layers = new ModuleList<CLIPEncoderLayer>();
        for (int i = 0; i < config.NumHiddenLayers; i++) layers.Add(new CLIPEncoderLayer(config));
        RegisterComponents();
    }

    public int Count => layers.Count;

    public override Tensor forward(Tensor hiddenStates)
    {
        foreach (var layer in layers) hiddenStates = layer.call(hiddenStates);
        return hiddenStates;
    }
}

/// <summary>Hugging Face's <c>CLIPTextTransformer</c>: embeddings, encoder, final LayerNorm.</summary>
public sealed class CLIPTextTransformer : nn.Module<Tensor, Tensor>
{
    private readonly CLIPTextEmbeddings embeddings;
    private readonly CLIPEncoder encoder;
    private readonly LayerNorm final_layer_norm;

    public CLIPTextTransformer(CLIPTextConfig config) : base(nameof(CLIPTextTransformer))
    {
        embeddings = new CLIPTextEmbeddings(config);
        encoder = new CLIPEncoder(config);
        final_layer_norm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds)
    {
        // 1. embed: [B, S] -> [B, S, D]
        var hiddenStates = embeddings.call(inputIds);
        // 2. causal transformer
        hiddenStates = encoder.call(hiddenStates);
        // 3. post-process
        return final_layer_norm.call(hiddenStates);
    }
}

/// <summary>
/// Hugging Face's <c>CLIPTextModel</c>, the text encoder of Stable Diffusion 1.x / 2.x: token ids [B, S] to
/// <c>last_hidden_state</c> [B, S, hidden_size], the states after the final LayerNorm that the U-Net takes as
/// <c>encoder_hidden_states</c>. Fields are named as Hugging Face's state dict (<c>text_model.encoder.layers.N...</c>),
/// so a text_encoder folder loads without a key table.
/// <para>No attention mask is taken: the causal mask already keeps every real token from seeing the padding after it,
/// and Stable Diffusion pipelines pass none (their CLIP configs leave <c>use_attention_mask</c> off).</para>
/// </summary>
public sealed class CLIPTextModel : nn.Module<Tensor, Tensor>
{
    /// <summary>Hugging Face's weights file name (not diffusers' diffusion_pytorch_model), with its half-precision variant.</summary>
    public const string WeightsFile = "model.safetensors";
    public const string Fp16WeightsFile = "model.fp16.safetensors";

    /// <summary>A buffer older transformers versions saved (the constant 0..max_position_embeddings-1); recomputed in forward instead.</summary>
    private const string PositionIdsKey = "text_model.embeddings.position_ids";

    private readonly CLIPTextTransformer text_model;

    public CLIPTextConfig Config { get; }

    public CLIPTextModel(CLIPTextConfig config) : base(nameof(CLIPTextModel))
    {
        config.Validate();
        Config = config;
        text_model = new CLIPTextTransformer(config);
        RegisterComponents();
    }

    /// <summary>
    /// Loads a text_encoder folder (config.json + model.safetensors, or model.fp16.safetensors upcast to float32), or
    /// the <c>text_encoder/</c> subfolder of a pipeline folder. Loading is strict: every weight must match in name and
    /// shape, so the encoder never runs with random weights.
    /// </summary>
    public static CLIPTextModel Load(string path)
    {
        string folder = ResolveFolder(path);
        var config = CLIPTextConfig.FromJson(ConfigJson.Load(Path.Combine(folder, ModelFolder.Config)));
        string weightsPath = new[] { WeightsFile, Fp16WeightsFile }.Select(f => Path.Combine(folder, f)).FirstOrDefault(File.Exists)
            ?? throw new ModelFormatException(File.Exists(Path.Combine(folder, WeightsFile + ".index.json"))
                ? $"'{folder}' holds a sharded text encoder ({WeightsFile}.index.json), which is not supported; CLIP text encoders fit in one {WeightsFile}."
                : $"'{folder}' has no {WeightsFile} (nor {Fp16WeightsFile}). Pickle weights (pytorch_model.bin) are refused because loading them can run code; " +
                  "convert them with transformers' save_pretrained(folder, safe_serialization=True).");

        var model = new CLIPTextModel(config);
        try
        {
            using var weights = WeightsOnDisk.OpenFile(weightsPath);
            weights.Tensors.Remove(PositionIdsKey);
            DiffusersModelLoader.LoadStrict(model, weights, weightsPath);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        return model;
    }

    /// <summary>input_ids [B, S] (int64, S at most max_position_embeddings) -> last_hidden_state [B, S, hidden_size].</summary>
    public override Tensor forward(Tensor inputIds)
    {
        if (inputIds.dim() != 2)
            throw new ArgumentException($"CLIPTextModel takes input_ids of shape [batch, length], not [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        if (inputIds.shape[1] > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"The prompt has {inputIds.shape[1]} tokens but this text encoder has positions for {Config.MaxPositionEmbeddings}; " +
                "truncate it (ClipTokenizer.EncodeForModel does).", nameof(inputIds));
        return text_model.call(inputIds.to_type(ScalarType.Int64));
    }

    private static string ResolveFolder(string path)
    {
        if (File.Exists(path) && Path.GetFileName(path) == ModelFolder.Config)
            path = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(path))
            throw new DirectoryNotFoundException($"No text encoder folder at '{path}'. Give a CLIP text_encoder folder (config.json + {WeightsFile}) or a Stable Diffusion pipeline folder.");
        if (!File.Exists(Path.Combine(path, ModelFolder.Config)) && File.Exists(Path.Combine(path, ModelFolder.PipelineIndex)))
        {
            string sub = Path.Combine(path, "text_encoder");
            if (!File.Exists(Path.Combine(sub, ModelFolder.Config)))
                throw new ModelFormatException($"'{path}' is a pipeline (model_index.json) but has no text_encoder/ subfolder with a config.json.");
            return sub;
        }
        return path;
    }
}
