using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.OnnxGraphs;

/// <summary>
/// <see cref="UNet2DModel.Forward"/> as an ONNX graph, step for step. Its twin is the model file itself:
/// a change to the forward pass there needs the same change here (the parity tests catch a mismatch).
/// </summary>
public static class UNet2DOnnx
{
    public static void Build(OnnxGraph g, UNet2DModel model)
    {
        var c = model.Config;
        var sample = g.Input(OnnxBundle.SampleInput, DataType.Float, OnnxBundle.BatchDim, (long)c.InChannels, (long)c.SampleSize[0], (long)c.SampleSize[1]);
        var timesteps = g.Input(OnnxBundle.TimestepInput, DataType.Int64, OnnxBundle.BatchDim);
        string? classLabels = model.ClassEmbedding switch
        {
            null => null,
            // diffusers' identity class embedding adds a ready-made embedding vector, not a label.
            Identity => g.Input(OnnxBundle.ClassLabelsInput, DataType.Float, OnnxBundle.BatchDim, (long)c.TimeEmbedDim),
            _ => g.Input(OnnxBundle.ClassLabelsInput, DataType.Int64, OnnxBundle.BatchDim),
        };

        // 0. center input if necessary
        string hiddenStates = sample;
        if (c.CenterInputSample)
            hiddenStates = g.Sub("center_input_sample", g.Mul("center_input_sample", hiddenStates, g.Scalar(2f)), g.Scalar(1f));

        // 1. time
        var timestepsFloat = OnnxLayers.ToFloat(g, timesteps, "time_proj");
        var tEmb = TimeProjection(g, model, timesteps, timestepsFloat, "time_proj");
        var emb = OnnxLayers.TimestepEmbedding(g, model.TimeEmbedding, tEmb, "time_embedding"); // [B, time_embed_dim]
        if (classLabels is not null)
        {
            string classEmb = model.ClassEmbedding switch
            {
                Embedding table => OnnxLayers.Embedding(g, table, classLabels, "class_embedding"),
                TimestepEmbedding mlp => OnnxLayers.TimestepEmbedding(g, mlp,
                    TimeProjection(g, model, classLabels, OnnxLayers.ToFloat(g, classLabels, "class_embedding"), "time_proj"), "class_embedding"),
                Identity => classLabels,
                var other => throw new OnnxExportException($"class_embedding of type {other!.GetType().Name} has no ONNX mapping."),
            };
            emb = g.Add("class_embedding", emb, classEmb);
        }
        var activatedTemb = new Dictionary<string, string>(StringComparer.Ordinal); // act(temb), computed once per activation

        string Resnet(nn.Module module, string x, string path)
        {
            if (module is RemovedResnet) return x;
            var block = (ResnetBlock2D)module;
            if (!activatedTemb.TryGetValue(block.Act, out var temb))
                activatedTemb[block.Act] = temb = OnnxLayers.Activation(g, block.Act, emb, $"time_embedding.{block.Act}");
            return OnnxLayers.ResnetBlock(g, block, x, temb, path);
        }
        string Attention(nn.Module module, string x, string path) =>
            module is Models.Layers.Attention attention ? OnnxLayers.Attention(g, attention, x, path, spatial: true) : x;

        // 2. pre-process
        hiddenStates = OnnxLayers.Conv(g, model.ConvIn, hiddenStates, "conv_in");

        // 3. down
        var downBlockResSamples = new List<string> { hiddenStates };
        for (int b = 0; b < model.DownBlocks.Count; b++)
        {
            var block = model.DownBlocks[b];
            string path = $"down_blocks.{b}";
            for (int i = 0; i < block.Resnets.Count; i++)
            {
                hiddenStates = Resnet((nn.Module)block.Resnets[i], hiddenStates, $"{path}.resnets.{i}");
                if (block.Attentions is not null) hiddenStates = Attention((nn.Module)block.Attentions[i], hiddenStates, $"{path}.attentions.{i}");
                downBlockResSamples.Add(hiddenStates);
            }
            if (block.Downsampler is { } downsampler)
            {
                string samplerPath = $"{path}.downsamplers.0";
                hiddenStates = downsampler is Downsample2D conv
                    // padding 0: diffusers pads one row and column at the bottom/right first.
                    ? OnnxLayers.Conv(g, conv.Conv, hiddenStates, $"{samplerPath}.conv", extraEndPadding: conv.Padding == 0 ? 1 : 0)
                    : Resnet(downsampler, hiddenStates, samplerPath);
                downBlockResSamples.Add(hiddenStates);
            }
        }

        // 4. mid
        if (model.MidBlock is { } mid)
        {
            hiddenStates = Resnet((nn.Module)mid.Resnets[0], hiddenStates, "mid_block.resnets.0");
            for (int i = 1; i < mid.Resnets.Count; i++)
            {
                if (mid.Attentions is not null) hiddenStates = Attention((nn.Module)mid.Attentions[i - 1], hiddenStates, $"mid_block.attentions.{i - 1}");
                hiddenStates = Resnet((nn.Module)mid.Resnets[i], hiddenStates, $"mid_block.resnets.{i}");
            }
        }

        // 5. up
        for (int b = 0; b < model.UpBlocks.Count; b++)
        {
            var block = model.UpBlocks[b];
            string path = $"up_blocks.{b}";
            for (int i = 0; i < block.Resnets.Count; i++)
            {
                var resHiddenStates = downBlockResSamples[^1];
                downBlockResSamples.RemoveAt(downBlockResSamples.Count - 1);
                hiddenStates = g.Concat($"{path}.resnets.{i}", 1, hiddenStates, resHiddenStates);
                hiddenStates = Resnet((nn.Module)block.Resnets[i], hiddenStates, $"{path}.resnets.{i}");
                if (block.Attentions is not null) hiddenStates = Attention((nn.Module)block.Attentions[i], hiddenStates, $"{path}.attentions.{i}");
            }
            if (block.Upsampler is { } upsampler)
            {
                string samplerPath = $"{path}.upsamplers.0";
                hiddenStates = upsampler is Upsample2D conv
                    ? OnnxLayers.Conv(g, conv.Conv, OnnxLayers.Nearest2x(g, hiddenStates, samplerPath), $"{samplerPath}.conv")
                    : Resnet(upsampler, hiddenStates, samplerPath);
            }
        }

        // 6. post-process (the output norm's activation is SiLU whatever act_fn says, as in diffusers)
        hiddenStates = OnnxLayers.GroupNorm(g, model.ConvNormOut, hiddenStates, "conv_norm_out");
        hiddenStates = OnnxLayers.Activation(g, "silu", hiddenStates, "conv_act");
        hiddenStates = OnnxLayers.Conv(g, model.ConvOut, hiddenStates, "conv_out");
        if (c.TimeEmbeddingType == "fourier")
            hiddenStates = g.Div("conv_out", hiddenStates, g.Reshape("conv_out", timestepsFloat, -1, 1, 1, 1));
        g.Output(hiddenStates, OnnxBundle.Output, DataType.Float, OnnxBundle.BatchDim, (long)c.OutChannels, (long)c.SampleSize[0], (long)c.SampleSize[1]);
    }

    /// <summary><see cref="UNet2DModel"/>'s TimeProjection: sinusoidal features, the learned table, or Gaussian Fourier features.</summary>
    private static string TimeProjection(OnnxGraph g, UNet2DModel model, string indices, string asFloat, string path)
    {
        var c = model.Config;
        return c.TimeEmbeddingType switch
        {
            "positional" => OnnxLayers.Sinusoidal(g, asFloat, c.BlockOutChannels[0], c.FlipSinToCos, c.FreqShift, path),
            "learned" => OnnxLayers.Embedding(g, (Embedding)model.TimeProj!, indices, path),
            "fourier" => OnnxLayers.GaussianFourier(g, (GaussianFourierProjection)model.TimeProj!, asFloat, path),
            var other => throw new OnnxExportException($"time_embedding_type '{other}' has no ONNX mapping."),
        };
    }
}
