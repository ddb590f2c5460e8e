using DiffusionPrune.Models;

namespace DiffusionPrune.Families;

/// <summary>
/// <see cref="UNet2DModel"/>'s resource walk: the constructor's layer widths (pruned ones included) and the forward's
/// resolutions, from the config alone.
/// </summary>
internal static class UNet2DResources
{
    public static ResourceEstimate Estimate(UNet2DConfig c)
    {
        var t = new CostTally();
        int[] channels = c.BlockOutChannels;
        long timeEmbedDim = c.TimeEmbedDim;
        long h = c.SampleSize[0], w = c.SampleSize[1];
        long sampleElements = (long)c.InChannels * h * w;

        // 1. time (and class) embedding, one vector per sample
        long timestepInputDim = channels[0];
        if (c.TimeEmbeddingType == "fourier") { t.Weights(channels[0]); timestepInputDim = 2L * channels[0]; }
        else if (c.TimeEmbeddingType == "learned") t.Weights((long)c.NumTrainTimesteps!.Value * channels[0]);
        t.Tensor(timestepInputDim);
        Mlp(t, timestepInputDim, timeEmbedDim);
        if (c.ClassEmbedType is null && c.NumClassEmbeds is int classes) t.Weights(classes * timeEmbedDim);
        else if (c.ClassEmbedType == "timestep") Mlp(t, timestepInputDim, timeEmbedDim);

        // 2. conv_in
        t.Conv(c.InChannels, channels[0], 3, h, w);

        // 3. down
        int outputChannel = channels[0];
        for (int i = 0; i < c.DownBlockTypes.Length; i++)
        {
            int inputChannel = outputChannel;
            outputChannel = channels[i];
            bool attention = BlockType(c.DownBlockTypes[i]) == "AttnDownBlock2D";
            string path = $"down_blocks.{i}";
            long headDim = c.AttentionHeadDim ?? outputChannel;
            for (int j = 0; j < c.LayersPerBlock; j++)
            {
                Resnet(t, c, $"{path}.resnets.{j}", j == 0 ? inputChannel : outputChannel, outputChannel, ref h, ref w);
                if (attention) UNetAttention(t, c, $"{path}.attentions.{j}", outputChannel, headDim, c.NormNumGroups, h, w);
            }
            if (i == channels.Length - 1) continue;
            string downsampleType = attention ? c.DownsampleType : "conv";
            if (downsampleType == "resnet")
                Resnet(t, c, $"{path}.downsamplers.0", outputChannel, outputChannel, ref h, ref w, resample: -1);
            else
            {
                // Downsample2D: stride-2 3x3 conv; padding 0 means diffusers' extra right/bottom pad of one.
                long ph = c.DownsamplePadding == 1 ? h + 2 : h + 1, pw = c.DownsamplePadding == 1 ? w + 2 : w + 1;
                h = (ph - 3) / 2 + 1;
                w = (pw - 3) / 2 + 1;
                t.Conv(outputChannel, outputChannel, 3, h, w);
            }
        }

        // 4. mid
        if (c.MidBlockType is not null)
        {
            int mid = channels[^1];
            int? groups = c.AttnNormNumGroups ?? (c.ResnetTimeScaleShift == "default" ? c.NormNumGroups : null);
            Resnet(t, c, "mid_block.resnets.0", mid, mid, ref h, ref w);
            if (c.AddAttention) UNetAttention(t, c, "mid_block.attentions.0", mid, c.AttentionHeadDim ?? mid, groups, h, w);
            Resnet(t, c, "mid_block.resnets.1", mid, mid, ref h, ref w);
        }

        // 5. up
        var reversed = channels.Reverse().ToArray();
        outputChannel = reversed[0];
        for (int i = 0; i < c.UpBlockTypes.Length; i++)
        {
            int prevOutputChannel = outputChannel;
            outputChannel = reversed[i];
            int inputChannel = reversed[Math.Min(i + 1, channels.Length - 1)];
            bool attention = BlockType(c.UpBlockTypes[i]) == "AttnUpBlock2D";
            string path = $"up_blocks.{i}";
            long headDim = c.AttentionHeadDim ?? outputChannel;
            int layers = c.LayersPerBlock + 1;
            for (int j = 0; j < layers; j++)
            {
                int skipChannels = j == layers - 1 ? inputChannel : outputChannel;
                int resnetIn = j == 0 ? prevOutputChannel : outputChannel;
                t.Tensor((resnetIn + skipChannels) * h * w); // the concatenation with the skip
                Resnet(t, c, $"{path}.resnets.{j}", resnetIn + skipChannels, outputChannel, ref h, ref w);
                if (attention) UNetAttention(t, c, $"{path}.attentions.{j}", outputChannel, headDim, c.NormNumGroups, h, w);
            }
            if (i == channels.Length - 1) continue;
            if (attention && c.UpsampleType == "resnet")
                Resnet(t, c, $"{path}.upsamplers.0", outputChannel, outputChannel, ref h, ref w, resample: +1);
            else
            {
                h *= 2;
                w *= 2;
                t.Tensor(outputChannel * h * w); // nearest 2x
                t.Conv(outputChannel, outputChannel, 3, h, w);
            }
        }

        // 6. out
        t.Weights(2L * channels[0]);
        t.Tensor(channels[0] * h * w);
        t.Tensor(channels[0] * h * w);
        t.Conv(channels[0], c.OutChannels, 3, h, w);
        return t.ToEstimate(UNet2DConfig.ClassName, c.SampleSize, sampleElements);
    }

    private static string BlockType(string type) => type.StartsWith("UNetRes", StringComparison.Ordinal) ? type[7..] : type;

    /// <summary>TimestepEmbedding: linear, activation, linear on one vector.</summary>
    private static void Mlp(CostTally t, long inFeatures, long outFeatures)
    {
        t.Linear(1, inFeatures, outFeatures);
        t.Tensor(outFeatures);
        t.Linear(1, outFeatures, outFeatures);
    }

    /// <summary>ResnetBlock2D (or nothing, when layer pruning removed it); <paramref name="resample"/> -1 halves, +1 doubles.</summary>
    private static void Resnet(CostTally t, UNet2DConfig c, string path, long inChannels, long outChannels, ref long h, ref long w, int resample = 0)
    {
        if (c.Structure.IsRemoved(path)) return;
        long inner = c.Structure.ResnetInner(path, (int)outChannels);
        long inputElements = inChannels * h * w;
        t.Weights(2 * inChannels);
        t.Tensor(inputElements); // norm1
        t.Tensor(inputElements); // activation
        if (resample != 0)
        {
            (h, w) = resample > 0 ? (h * 2, w * 2) : (h / 2, w / 2);
            t.Tensor(inChannels * h * w); // the resampled input, and the resampled hidden states
            t.Tensor(inChannels * h * w);
        }
        long hw = h * w;
        t.Conv(inChannels, inner, 3, h, w);
        long projected = c.ResnetTimeScaleShift == "scale_shift" ? 2 * inner : inner;
        t.Tensor(c.TimeEmbedDim); // activation of the time embedding
        t.Linear(1, c.TimeEmbedDim, projected);
        t.Weights(2 * inner);
        t.Tensor(inner * hw); // + time embedding, or the norm before scale/shift
        t.Tensor(inner * hw); // norm2 (and its modulation)
        t.Tensor(inner * hw); // activation
        t.Conv(inner, outChannels, 3, h, w);
        if (inChannels != outChannels) t.Conv(inChannels, outChannels, 1, h, w);
        t.Tensor(outChannels * hw); // residual sum
    }

    /// <summary>The U-Net's residual self-attention over h x w tokens (or nothing, when removed).</summary>
    private static void UNetAttention(CostTally t, UNet2DConfig c, string path, long channels, long headDim, int? normGroups, long h, long w)
    {
        if (c.Structure.IsRemoved(path)) return;
        long heads = c.Structure.Heads(path, (int)(channels / headDim));
        long inner = heads * headDim, tokens = h * w;
        if (normGroups is not null)
        {
            t.Weights(2 * channels);
            t.Tensor(channels * tokens);
        }
        t.Linear(tokens, channels, inner);
        t.Linear(tokens, channels, inner);
        t.Linear(tokens, channels, inner);
        t.AttentionCore(tokens, heads, headDim);
        t.Linear(tokens, inner, channels);
        t.Tensor(channels * tokens); // residual sum
    }
}
