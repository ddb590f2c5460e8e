using DiffusionPrune.TextEncoding;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.OnnxGraphs;

/// <summary>
/// <see cref="CLIPTextModel.forward"/> as an ONNX graph: diffusers' OnnxStableDiffusionPipeline <c>text_encoder/model.onnx</c>,
/// <c>input_ids</c> [batch, sequence] -> <c>last_hidden_state</c> float32 [batch, sequence, hidden_size]. The pipeline feeds
/// int32 ids (<c>text_input_ids.astype(np.int32)</c>), so that is the default; int64 is the other choice (Gather takes either).
/// Modules are found by their state-dict paths (<c>text_model.encoder.layers.N.self_attn.q_proj</c>), the names the
/// TorchSharp model registers, so this reads the same weights the model runs.
/// <para>No pooler_output: Stable Diffusion pipelines use only the last hidden state.</para>
/// </summary>
public static class CLIPTextOnnx
{
    public const string InputIds = Inference.Onnx.OnnxPipelineLayout.InputIds, LastHiddenState = Inference.Onnx.OnnxPipelineLayout.LastHiddenState;

    public static void Build(OnnxGraph g, CLIPTextModel model, DataType idType = DataType.Int32)
    {
        if (idType is not (DataType.Int32 or DataType.Int64))
            throw new OnnxExportException($"input_ids must be int32 or int64, not {idType}.");
        var c = model.Config;
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module, StringComparer.Ordinal);
        T Module<T>(string path) where T : nn.Module => modules.TryGetValue(path, out var m) && m is T typed
            ? typed : throw new OnnxExportException($"CLIPTextModel has no {typeof(T).Name} at '{path}'.");
        string Norm(string input, string path)
        {
            var norm = Module<LayerNorm>(path);
            return OnnxLayers.LayerNorm(g, input, path, c.HiddenSize, c.LayerNormEps, norm.weight, norm.bias);
        }
        string Linear(string input, string path) => OnnxLayers.Linear(g, Module<Linear>(path), input, path, 3);

        var inputIds = g.Input(InputIds, idType, "batch", "sequence");

        // 1. embed: token embedding [B, S, D] + the first S rows of the position table [S, D]
        const string embeddings = "text_model.embeddings";
        var tokens = OnnxLayers.Embedding(g, Module<Embedding>($"{embeddings}.token_embedding"), inputIds, $"{embeddings}.token_embedding");
        var length = g.Node("Shape", embeddings, [inputIds], ("start", 1L), ("end", 2L)); // [S]
        var positionTable = g.Weight($"{embeddings}.position_embedding.weight", Module<Embedding>($"{embeddings}.position_embedding").weight!);
        var positions = g.Node("Slice", embeddings, [positionTable, g.Ints(0), length, g.Ints(0)]);
        var hiddenStates = g.Add(embeddings, tokens, positions);

        // The causal mask as a score bias: 0 on and below the diagonal, -inf above (what is_causal gives SDPA), sliced to [S, S].
        int maxLength = c.MaxPositionEmbeddings;
        var bias = new float[maxLength * maxLength];
        for (int i = 0; i < maxLength; i++)
            for (int j = i + 1; j < maxLength; j++)
                bias[i * maxLength + j] = float.NegativeInfinity;
        var causalBias = g.Node("Slice", "text_model.causal_mask",
            [g.Floats(bias, maxLength, maxLength), g.Ints(0, 0), g.Concat("text_model.causal_mask", 0, length, length), g.Ints(0, 1)]);

        // 2. causal transformer: pre-LayerNorm attention and MLP, each residual
        long heads = c.NumAttentionHeads, headDim = c.HeadDim;
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string layer = $"text_model.encoder.layers.{l}", attn = $"{layer}.self_attn", mlp = $"{layer}.mlp";
            var normed = Norm(hiddenStates, $"{layer}.layer_norm1");
            string Heads(string name, params long[] perm) =>
                g.Transpose($"{attn}.{name}", g.Reshape($"{attn}.{name}", Linear(normed, $"{attn}.{name}"), 0, 0, heads, headDim), perm);
            var query = Heads("q_proj", 0, 2, 1, 3); // [B, heads, S, d]
            var keyT = Heads("k_proj", 0, 2, 3, 1);  // [B, heads, d, S]
            var value = Heads("v_proj", 0, 2, 1, 3); // [B, heads, S, d]
            var scores = g.Add(attn, g.Mul(attn, g.MatMul(attn, query, keyT), g.Scalar((float)(1 / Math.Sqrt(headDim)))), causalBias);
            var attended = g.MatMul(attn, g.Node("Softmax", attn, [scores], ("axis", -1L)), value);
            attended = g.Reshape(attn, g.Transpose(attn, attended, 0, 2, 1, 3), 0, 0, heads * headDim);
            hiddenStates = g.Add(attn, hiddenStates, Linear(attended, $"{attn}.out_proj"));

            var hidden = Linear(Norm(hiddenStates, $"{layer}.layer_norm2"), $"{mlp}.fc1");
            hidden = c.HiddenAct switch
            {
                // OpenAI's QuickGELU: x * sigmoid(1.702 x)
                "quick_gelu" => g.Mul(mlp, hidden, g.Sigmoid(mlp, g.Mul(mlp, hidden, g.Scalar(1.702f)))),
                "gelu" => OnnxLayers.Gelu(g, hidden, mlp, approximateTanh: false),
                var other => throw new OnnxExportException($"'{mlp}': hidden_act '{other}' has no ONNX mapping."),
            };
            hiddenStates = g.Add(mlp, hiddenStates, Linear(hidden, $"{mlp}.fc2"));
        }

        // 3. post-process
        hiddenStates = Norm(hiddenStates, "text_model.final_layer_norm");
        g.Output(hiddenStates, LastHiddenState, DataType.Float, "batch", "sequence", (long)c.HiddenSize);
    }
}
