using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.OnnxGraphs;

/// <summary>
/// <see cref="DiTTransformer2DModel.Forward"/> as an ONNX graph, step for step. Its twin is the model file:
/// a change to the forward pass there needs the same change here (the parity tests catch a mismatch).
/// </summary>
public static class DiTOnnx
{
    public static void Build(OnnxGraph g, DiTTransformer2DModel model)
    {
        var c = model.Config;
        int p = c.PatchSize, size = c.SampleSize, outChannels = c.ResolvedOutChannels;
        var sample = g.Input(OnnxBundle.SampleInput, DataType.Float, OnnxBundle.BatchDim, (long)c.InChannels, (long)size, (long)size);
        var timesteps = g.Input(OnnxBundle.TimestepInput, DataType.Int64, OnnxBundle.BatchDim);
        var labels = g.Input(OnnxBundle.ClassLabelsInput, DataType.Int64, OnnxBundle.BatchDim);
        var timestepsFloat = OnnxLayers.ToFloat(g, timesteps, "timesteps");

        // 1. input: patchify, add the fixed 2-D sin-cos positions
        var patchEmbed = model.PosEmbed;
        var hiddenStates = OnnxLayers.Conv(g, patchEmbed.Proj, sample, "pos_embed.proj");
        hiddenStates = g.Transpose("pos_embed", g.Reshape("pos_embed", hiddenStates, 0, 0, -1), 0, 2, 1); // [B, N, D]
        int grid = size / p;
        using (var table = PatchEmbed.SinCos2D(patchEmbed.EmbedDim, grid, grid, patchEmbed.BaseSize))
            hiddenStates = g.Add("pos_embed", hiddenStates, g.Weight("pos_embed.pos_embed", table, [1, grid * grid, patchEmbed.EmbedDim]));

        // 2. blocks (a removed block is the identity)
        string? timestepFeatures = null; // the same 256 sinusoidal features feed every block's embedding
        string Conditioning(CombinedTimestepLabelEmbeddings embeddings, string path)
        {
            timestepFeatures ??= OnnxLayers.Sinusoidal(g, timestepsFloat, CombinedTimestepLabelEmbeddings.TimestepFeatureDim,
                flipSinToCos: true, shift: 1, "timesteps");
            var t = OnnxLayers.TimestepEmbedding(g, embeddings.TimestepEmbedder, timestepFeatures, $"{path}.timestep_embedder");
            var y = OnnxLayers.Embedding(g, embeddings.ClassEmbedder.Table, labels, $"{path}.class_embedder.embedding_table");
            return g.Add(path, t, y); // [B, D]
        }
        string? firstBlockConditioning = null;
        for (int i = 0; i < model.Blocks.Count; i++)
        {
            if (model.Blocks[i] is not DiTBlock block) continue;
            string path = $"transformer_blocks.{i}";
            var conditioning = Conditioning(block.Norm1.Emb, $"{path}.norm1.emb");
            if (i == 0) firstBlockConditioning = conditioning;
            hiddenStates = Block(g, block, hiddenStates, conditioning, path);
        }

        // 3. output: modulated LayerNorm with block 0's conditioning, projection, unpatchify
        firstBlockConditioning ??= Conditioning(model.OutputEmbedding, "transformer_blocks.0.norm1.emb");
        var modulation = OnnxLayers.Linear(g, model.ProjOut1, OnnxLayers.Activation(g, "silu", firstBlockConditioning, "proj_out_1"), "proj_out_1", 2);
        var chunks = g.Split("proj_out_1", modulation, 1, c.InnerDim, c.InnerDim);
        hiddenStates = OnnxLayers.LayerNorm(g, hiddenStates, "norm_out", c.InnerDim, DiTTransformer2DModel.OutputNormEps);
        hiddenStates = Modulate(g, hiddenStates, shift: chunks[0], scale: chunks[1], "norm_out");
        hiddenStates = OnnxLayers.Linear(g, model.ProjOut2, hiddenStates, "proj_out_2", 3); // [B, N, p*p*C]
        hiddenStates = g.Reshape("unpatchify", hiddenStates, -1, grid, grid, p, p, outChannels);
        hiddenStates = g.Transpose("unpatchify", hiddenStates, 0, 5, 1, 3, 2, 4); // nhwpqc -> nchpwq
        hiddenStates = g.Reshape("unpatchify", hiddenStates, -1, outChannels, grid * p, grid * p);
        g.Output(hiddenStates, OnnxBundle.Output, DataType.Float, OnnxBundle.BatchDim, (long)outChannels, (long)size, (long)size);
    }

    /// <summary><see cref="DiTBlock.Forward"/>: AdaLN-Zero attention, then the modulated feed-forward, each gated and residual.</summary>
    private static string Block(OnnxGraph g, DiTBlock block, string hiddenStates, string conditioning, string path)
    {
        if (block.LayerGate is not null || block.Ff.NeuronGate is not null)
            throw new OnnxExportException($"'{path}' carries mask-learning gates; clear them (MaskedModel.ClearAll) or apply the plan with StructuralSurgery before export.");
        long dim = block.Norm1.Linear.in_features;

        // norm1: six modulation vectors shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each [B, D]
        var e = OnnxLayers.Linear(g, block.Norm1.Linear, OnnxLayers.Activation(g, "silu", conditioning, $"{path}.norm1"), $"{path}.norm1.linear", 2);
        var m = g.Split($"{path}.norm1", e, 1, dim, dim, dim, dim, dim, dim);
        var normHiddenStates = OnnxLayers.LayerNorm(g, hiddenStates, $"{path}.norm1", dim, AdaLayerNormZero.Eps);
        normHiddenStates = Modulate(g, normHiddenStates, shift: m[0], scale: m[1], $"{path}.norm1");

        var attnOutput = OnnxLayers.Attention(g, block.Attn1, normHiddenStates, $"{path}.attn1", spatial: false);
        hiddenStates = g.Add(path, g.Mul(path, g.Unsqueeze(path, m[2], 1), attnOutput), hiddenStates);

        normHiddenStates = block.Norm3 is { } norm3
            ? OnnxLayers.LayerNorm(g, hiddenStates, $"{path}.norm3", dim, norm3.eps, norm3.weight, norm3.bias)
            : OnnxLayers.LayerNorm(g, hiddenStates, $"{path}.norm3", dim, block.NormEps);
        normHiddenStates = Modulate(g, normHiddenStates, shift: m[3], scale: m[4], $"{path}.norm3");

        // ff: net.0 (projection + GELU), net.1 dropout (eval: nothing), net.2
        var ffIn = block.Ff.In;
        var ffHidden = OnnxLayers.Linear(g, ffIn.Proj, normHiddenStates, $"{path}.ff.net.0.proj", 3);
        ffHidden = OnnxLayers.Gelu(g, ffHidden, $"{path}.ff.net.0", ffIn.ApproximateTanh);
        var ffOutput = OnnxLayers.Linear(g, block.Ff.Out, ffHidden, $"{path}.ff.net.2", 3);
        return g.Add(path, g.Mul(path, g.Unsqueeze(path, m[5], 1), ffOutput), hiddenStates);
    }

    /// <summary>x·(1 + scale) + shift with [B, D] modulation broadcast over the tokens of [B, N, D].</summary>
    private static string Modulate(OnnxGraph g, string x, string shift, string scale, string path)
    {
        var scalePlusOne = g.Add(path, g.Unsqueeze(path, scale, 1), g.Scalar(1f));
        return g.Add(path, g.Mul(path, x, scalePlusOne), g.Unsqueeze(path, shift, 1));
    }
}
