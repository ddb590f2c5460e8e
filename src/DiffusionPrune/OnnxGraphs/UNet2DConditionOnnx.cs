using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.OnnxGraphs;

/// <summary>
/// <see cref="UNet2DConditionModel.Forward"/> as an ONNX graph, step for step, with the interface diffusers'
/// OnnxStableDiffusionPipeline feeds its <c>unet/model.onnx</c>: <c>sample</c> float32 [batch, in, height, width],
/// <c>timestep</c> float32 [batch] (not the int64 of <see cref="Export.OnnxContract"/>: Euler and DPM schedulers step at
/// fractional timesteps, and diffusers casts to whatever type the graph declares) and <c>encoder_hidden_states</c> float32 [batch, sequence, cross_attention_dim] ->
/// <c>out_sample</c>. Height, width and the token count are dynamic, as pipelines generate at several sizes.
/// Its twins are the model file (a change to the forward pass there needs the same change here; the parity tests catch
/// a mismatch) and <see cref="UNet2DOnnx"/>, whose text-free blocks it repeats rather than bends.
/// <para>Only text-to-image U-Nets export: class embeddings and SDXL's text_time embedding (extra graph inputs no ONNX
/// Stable Diffusion pipeline passes) are refused, as is the cross-attention mask (pipelines pass none).</para>
/// </summary>
public static class UNet2DConditionOnnx
{
    /// <summary>The text-state input, named as diffusers' ONNX U-Net names it.</summary>
    public const string EncoderHiddenStatesInput = Inference.Onnx.OnnxPipelineLayout.EncoderHiddenStates;
    public const string HeightDim = "height", WidthDim = "width", SequenceDim = "sequence";

    public static void Build(OnnxGraph g, UNet2DConditionModel model)
    {
        var c = model.Config;
        if (model.ClassEmbedding is not null || model.AddEmbedding is not null)
            throw new OnnxExportException("ONNX export of UNet2DConditionModel covers text-to-image U-Nets (Stable Diffusion 1.x / 2.x): this one has " +
                (model.AddEmbedding is not null ? "SDXL's text_time added embedding" : "a class embedding") + ", whose extra inputs the ONNX pipeline layout has no place for.");
        var sample = g.Input(OnnxBundle.SampleInput, DataType.Float, OnnxBundle.BatchDim, (long)c.InChannels, HeightDim, WidthDim);
        var timesteps = g.Input(OnnxBundle.TimestepInput, DataType.Float, OnnxBundle.BatchDim);
        var encoderHiddenStates = g.Input(EncoderHiddenStatesInput, DataType.Float, OnnxBundle.BatchDim, SequenceDim, (long)c.CrossAttentionDim[^1]);

        // 0. center input if necessary
        string hiddenStates = sample;
        if (c.CenterInputSample)
            hiddenStates = g.Sub("center_input_sample", g.Mul("center_input_sample", hiddenStates, g.Scalar(2f)), g.Scalar(1f));

        // 1. time: [B] -> [B, block_out_channels[0]] sinusoidal features -> [B, time_embed_dim] (timestep_post_act inside)
        var tEmb = OnnxLayers.Sinusoidal(g, timesteps, c.BlockOutChannels[0], c.FlipSinToCos, c.FreqShift, "time_proj");
        var emb = OnnxLayers.TimestepEmbedding(g, model.TimeEmbedding, tEmb, "time_embedding");
        if (c.TimeEmbeddingActFn is not null)
            emb = OnnxLayers.Activation(g, c.TimeEmbeddingActFn, emb, "time_embed_act");
        var activatedTemb = new Dictionary<string, string>(StringComparer.Ordinal); // act(temb), computed once per activation

        string Resnet(nn.Module module, string x, string path)
        {
            if (module is RemovedResnet) return x;
            var block = (ResnetBlock2D)module;
            if (!activatedTemb.TryGetValue(block.Act, out var temb))
                activatedTemb[block.Act] = temb = OnnxLayers.Activation(g, block.Act, emb, $"time_embedding.{block.Act}");
            return OnnxLayers.ResnetBlock(g, block, x, temb, path);
        }
        string CrossAttention(nn.Module slot, string x, string path) => slot switch
        {
            Transformer2DModel transformer => Transformer2D(g, transformer, x, encoderHiddenStates, path),
            RemovedTransformer2D => x,
            _ => throw new OnnxExportException($"'{path}': unexpected attention module {slot.GetName()}."),
        };
        string Downsample(nn.Module downsampler, string x, string path) => downsampler is Downsample2D conv
            // padding 0: diffusers pads one row and column at the bottom/right first.
            ? OnnxLayers.Conv(g, conv.Conv, x, $"{path}.conv", extraEndPadding: conv.Padding == 0 ? 1 : 0)
            : Resnet(downsampler, x, path);
        string Upsample(nn.Module upsampler, string x, string path) => upsampler is Upsample2D conv
            ? OnnxLayers.Conv(g, conv.Conv, OnnxLayers.Nearest2x(g, x, path), $"{path}.conv")
            : Resnet(upsampler, x, path);

        // 2. pre-process: [B, in, H, W] -> [B, C0, H, W]
        hiddenStates = OnnxLayers.Conv(g, model.ConvIn, hiddenStates, "conv_in");

        // 3. down: every layer's output (and every downsampled map) is kept for the up path
        var downBlockResSamples = new List<string> { hiddenStates };
        for (int b = 0; b < model.DownBlocks.Count; b++)
        {
            string path = $"down_blocks.{b}";
            switch (model.DownBlocks[b])
            {
                case CrossAttnDownBlock2D cross:
                    for (int i = 0; i < cross.Resnets.Count; i++)
                    {
                        hiddenStates = Resnet((nn.Module)cross.Resnets[i], hiddenStates, $"{path}.resnets.{i}");
                        hiddenStates = CrossAttention(cross.Attentions[i], hiddenStates, $"{path}.attentions.{i}");
                        downBlockResSamples.Add(hiddenStates);
                    }
                    if (cross.Downsampler is { } crossDownsampler)
                        downBlockResSamples.Add(hiddenStates = Downsample(crossDownsampler, hiddenStates, $"{path}.downsamplers.0"));
                    break;
                case DownBlock2D plain:
                    for (int i = 0; i < plain.Resnets.Count; i++)
                    {
                        hiddenStates = Resnet((nn.Module)plain.Resnets[i], hiddenStates, $"{path}.resnets.{i}");
                        downBlockResSamples.Add(hiddenStates);
                    }
                    if (plain.Downsampler is { } plainDownsampler)
                        downBlockResSamples.Add(hiddenStates = Downsample(plainDownsampler, hiddenStates, $"{path}.downsamplers.0"));
                    break;
                case var other:
                    throw new OnnxExportException($"'{path}': unexpected down block {other.GetName()}.");
            }
        }

        // 4. mid
        switch (model.MidBlock)
        {
            case UNetMidBlock2DCrossAttn cross:
                hiddenStates = Resnet((nn.Module)cross.Resnets[0], hiddenStates, "mid_block.resnets.0");
                for (int i = 0; i < cross.Attentions.Count; i++)
                {
                    hiddenStates = CrossAttention(cross.Attentions[i], hiddenStates, $"mid_block.attentions.{i}");
                    hiddenStates = Resnet((nn.Module)cross.Resnets[i + 1], hiddenStates, $"mid_block.resnets.{i + 1}");
                }
                break;
            case UNetMidBlock2D plain:
                // built without attention (numLayers 0 in the U-Net): its ResNets run in order
                for (int i = 0; i < plain.Resnets.Count; i++)
                    hiddenStates = Resnet((nn.Module)plain.Resnets[i], hiddenStates, $"mid_block.resnets.{i}");
                break;
            case null:
                break;
            case var other:
                throw new OnnxExportException($"mid_block: unexpected block {other.GetName()}.");
        }

        // 5. up: each layer concatenates the last skip on the channels
        for (int b = 0; b < model.UpBlocks.Count; b++)
        {
            string path = $"up_blocks.{b}";
            var (resnets, attentions, upsampler) = model.UpBlocks[b] switch
            {
                CrossAttnUpBlock2D cross => (cross.Resnets, cross.Attentions, (nn.Module?)cross.Upsampler),
                UpBlock2D plain => (plain.Resnets, (IList<nn.Module>?)null, plain.Upsampler),
                var other => throw new OnnxExportException($"'{path}': unexpected up block {other.GetName()}."),
            };
            for (int i = 0; i < resnets.Count; i++)
            {
                var resHiddenStates = downBlockResSamples[^1];
                downBlockResSamples.RemoveAt(downBlockResSamples.Count - 1);
                hiddenStates = g.Concat($"{path}.resnets.{i}", 1, hiddenStates, resHiddenStates);
                hiddenStates = Resnet((nn.Module)resnets[i], hiddenStates, $"{path}.resnets.{i}");
                if (attentions is not null) hiddenStates = CrossAttention(attentions[i], hiddenStates, $"{path}.attentions.{i}");
            }
            if (upsampler is not null)
                hiddenStates = Upsample(upsampler, hiddenStates, $"{path}.upsamplers.0");
        }

        // 6. post-process: [B, C0, H, W] -> [B, out, H, W]; unlike UNet2DModel the output activation is act_fn
        hiddenStates = OnnxLayers.GroupNorm(g, model.ConvNormOut, hiddenStates, "conv_norm_out");
        hiddenStates = OnnxLayers.Activation(g, c.ActFn, hiddenStates, "conv_act");
        hiddenStates = OnnxLayers.Conv(g, model.ConvOut, hiddenStates, "conv_out");
        g.Output(hiddenStates, OnnxBundle.Output, DataType.Float, OnnxBundle.BatchDim, (long)c.OutChannels, HeightDim, WidthDim);
    }

    /// <summary>
    /// <see cref="Transformer2DModel.Forward"/>: GroupNorm, proj_in to tokens [B, H·W, inner], the transformer blocks,
    /// proj_out back to [B, C, H, W], plus the input. A 1x1 proj_out convolution is applied to the tokens as the Linear it
    /// is (weight [C, inner, 1, 1] viewed as [C, inner]) so both projection forms share one reshape back to the input's shape.
    /// </summary>
    public static string Transformer2D(OnnxGraph g, Transformer2DModel transformer, string x, string encoderHiddenStates, string path)
    {
        if (transformer.LayerGate is not null)
            throw new OnnxExportException($"'{path}' carries a mask-learning gate; clear it (MaskedModel.ClearAll) or apply the plan with StructuralSurgery before export.");
        var residual = x;
        long inner = transformer.InnerDim;

        // 1. input: [B, C, H, W] -> tokens [B, H*W, inner]
        var h = OnnxLayers.GroupNorm(g, transformer.Norm, x, $"{path}.norm");
        if (transformer.ProjIn is Conv2d convIn)
            h = g.Transpose($"{path}.proj_in", g.Reshape($"{path}.proj_in", OnnxLayers.Conv(g, convIn, h, $"{path}.proj_in"), 0, inner, -1), 0, 2, 1);
        else
            h = OnnxLayers.Linear(g, (Linear)transformer.ProjIn, g.Transpose($"{path}.proj_in", g.Reshape($"{path}.proj_in", h, 0, 0, -1), 0, 2, 1), $"{path}.proj_in", 3);

        // 2. blocks
        for (int j = 0; j < transformer.TransformerBlocks.Count; j++)
            h = TransformerBlock(g, transformer.TransformerBlocks[j], h, encoderHiddenStates, $"{path}.transformer_blocks.{j}");

        // 3. output: tokens [B, H*W, inner] -> [B, H*W, C] -> [B, C, H, W], plus the input
        string outPath = $"{path}.proj_out";
        if (transformer.ProjOut is Conv2d convOut)
        {
            if (convOut.weight!.shape[2] != 1 || convOut.weight.shape[3] != 1)
                throw new OnnxExportException($"'{outPath}': a Transformer2DModel projection is a 1x1 convolution, not {convOut.weight.shape[2]}x{convOut.weight.shape[3]}.");
            using var weightT = convOut.weight.detach().reshape(convOut.weight.shape[0], inner).t();
            h = g.MatMul(outPath, h, g.Weight($"{outPath}.weight_t", weightT));
            if (convOut.bias is not null) h = g.Add(outPath, h, g.Weight($"{outPath}.bias", convOut.bias));
        }
        else
        {
            h = OnnxLayers.Linear(g, (Linear)transformer.ProjOut, h, outPath, 3);
        }
        h = g.Reshape(outPath, g.Transpose(outPath, h, 0, 2, 1), g.Shape(outPath, residual));
        return g.Add(path, h, residual);
    }

    /// <summary>
    /// <see cref="BasicTransformerBlock.Forward"/> on tokens [B, N, dim]: LayerNorm + self-attention (or attention to the
    /// text with only_cross_attention), LayerNorm + cross-attention, LayerNorm + GEGLU feed-forward, each residual.
    /// </summary>
    public static string TransformerBlock(OnnxGraph g, BasicTransformerBlock block, string x, string encoderHiddenStates, string path)
    {
        string Norm(LayerNorm norm, string input, string name) =>
            OnnxLayers.LayerNorm(g, input, $"{path}.{name}", norm.weight!.shape[0], norm.eps, norm.weight, norm.bias);

        // 1. self-attention
        var h = OnnxLayers.Attention(g, block.Attn1, Norm(block.Norm1, x, "norm1"), $"{path}.attn1", spatial: false,
            block.OnlyCrossAttention ? encoderHiddenStates : null);
        x = g.Add($"{path}.attn1", h, x);

        // 2. cross-attention
        h = OnnxLayers.Attention(g, block.Attn2, Norm(block.Norm2, x, "norm2"), $"{path}.attn2", spatial: false, encoderHiddenStates);
        x = g.Add($"{path}.attn2", h, x);

        // 3. feed-forward
        h = GegluFeedForward(g, block.FF, Norm(block.Norm3, x, "norm3"), $"{path}.ff");
        return g.Add($"{path}.ff", h, x);
    }

    /// <summary>
    /// <see cref="Models.Layers.GegluFeedForward"/>: net.0.proj to 2 x inner, split into value and gate halves, value * gelu(gate)
    /// (exact GELU), net.2 back to the block width. Pruned neurons are already gone from both halves, so inner is the module's.
    /// </summary>
    public static string GegluFeedForward(OnnxGraph g, GegluFeedForward ff, string x, string path)
    {
        if (ff.NeuronGate is not null)
            throw new OnnxExportException($"'{path}' carries mask-learning gates; clear them (MaskedModel.ClearAll) or apply the plan with StructuralSurgery before export.");
        long inner = ff.In.DimOut;
        var projected = OnnxLayers.Linear(g, ff.In.Proj, x, $"{path}.net.0.proj", 3);
        var halves = g.Split($"{path}.net.0", projected, -1, inner, inner);
        var hidden = g.Mul($"{path}.net.0", halves[0], OnnxLayers.Gelu(g, halves[1], $"{path}.net.0", approximateTanh: false));
        return OnnxLayers.Linear(g, ff.Out, hidden, $"{path}.net.2", 3);
    }
}
