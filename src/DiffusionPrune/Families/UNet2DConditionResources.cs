using DiffusionPrune.Models;

namespace DiffusionPrune.Families;

/// <summary>
/// <see cref="UNet2DConditionModel"/>'s resource walk: the constructor's layer widths (pruned ones included) and the
/// forward's resolutions, from the config alone, with <see cref="UNet2DConditionFamily.TextTokens"/> text tokens for the
/// cross-attention. Its twin for the pixel U-Net is <see cref="UNet2DResources"/>; the ResNet walk is duplicated rather
/// than shared because the two configs differ in every field it reads.
/// </summary>
internal static class UNet2DConditionResources
{
    /// <summary>The latent size estimated when the config has no sample_size: Stable Diffusion 1.x's 64 x 64.</summary>
    public const int DefaultLatentSize = 64;

    public static ResourceEstimate Estimate(UNet2DConditionConfig c)
    {
        var t = new CostTally();
        int[] channels = c.BlockOutChannels;
        int n = channels.Length;
        long timeEmbedDim = c.TimeEmbedDim;
        int[] size = c.SampleSize ?? [DefaultLatentSize, DefaultLatentSize];
        long h = size[0], w = size[1];
        long tokens = UNet2DConditionFamily.TextTokens;

        // 1. time, class and SDXL added embeddings, one vector per sample
        t.Tensor(channels[0]);
        Mlp(t, channels[0], timeEmbedDim);
        if (c.ClassEmbedType is null && c.NumClassEmbeds is int classes) t.Weights(classes * timeEmbedDim);
        else if (c.ClassEmbedType == "timestep") Mlp(t, channels[0], timeEmbedDim);
        else if (c.ClassEmbedType == "projection") Mlp(t, c.ProjectionClassEmbeddingsInputDim!.Value, timeEmbedDim);
        if (c.AdditionEmbedType == "text_time") Mlp(t, c.ProjectionClassEmbeddingsInputDim!.Value, timeEmbedDim);

        // 2. conv_in
        t.Conv(c.InChannels, channels[0], c.ConvInKernel, h, w);

        // 3. down
        int outputChannel = channels[0];
        for (int i = 0; i < n; i++)
        {
            int inputChannel = outputChannel;
            outputChannel = channels[i];
            string path = $"down_blocks.{i}";
            bool cross = c.DownBlockTypes[i] == UNet2DConditionConfig.CrossAttnDownBlock;
            for (int j = 0; j < c.LayersPerBlock[i]; j++)
            {
                Resnet(t, c, $"{path}.resnets.{j}", j == 0 ? inputChannel : outputChannel, outputChannel, h, w);
                if (cross) Transformer(t, c, $"{path}.attentions.{j}", outputChannel, i, c.OnlyCrossAttention[i], h, w, tokens);
            }
            if (i == n - 1) continue;
            long ph = c.DownsamplePadding == 1 ? h + 2 : h + 1, pw = c.DownsamplePadding == 1 ? w + 2 : w + 1;
            h = (ph - 3) / 2 + 1;
            w = (pw - 3) / 2 + 1;
            t.Conv(outputChannel, outputChannel, 3, h, w);
        }

        // 4. mid
        int mid = channels[^1];
        if (c.MidBlockType is not null)
        {
            Resnet(t, c, "mid_block.resnets.0", mid, mid, h, w);
            if (c.MidBlockType == UNet2DConditionConfig.CrossAttnMidBlock)
            {
                Transformer(t, c, "mid_block.attentions.0", mid, n - 1, onlyCrossAttention: false, h, w, tokens);
                Resnet(t, c, "mid_block.resnets.1", mid, mid, h, w);
            }
        }

        // 5. up: the per-block lists reversed
        var reversed = channels.Reverse().ToArray();
        outputChannel = reversed[0];
        for (int i = 0; i < n; i++)
        {
            int r = n - 1 - i;
            int prevOutputChannel = outputChannel;
            outputChannel = reversed[i];
            int inputChannel = reversed[Math.Min(i + 1, n - 1)];
            string path = $"up_blocks.{i}";
            bool cross = c.UpBlockTypes[i] == UNet2DConditionConfig.CrossAttnUpBlock;
            int layers = c.LayersPerBlock[r] + 1;
            for (int j = 0; j < layers; j++)
            {
                int skipChannels = j == layers - 1 ? inputChannel : outputChannel;
                int resnetIn = j == 0 ? prevOutputChannel : outputChannel;
                t.Tensor((resnetIn + skipChannels) * h * w); // the concatenation with the skip
                Resnet(t, c, $"{path}.resnets.{j}", resnetIn + skipChannels, outputChannel, h, w);
                if (cross) Transformer(t, c, $"{path}.attentions.{j}", outputChannel, r, c.OnlyCrossAttention[r], h, w, tokens);
            }
            if (i == n - 1) continue;
            h *= 2;
            w *= 2;
            t.Tensor(outputChannel * h * w); // nearest 2x
            t.Conv(outputChannel, outputChannel, 3, h, w);
        }

        // 6. out
        t.Weights(2L * channels[0]);
        t.Tensor(channels[0] * h * w);
        t.Tensor(channels[0] * h * w);
        t.Conv(channels[0], c.OutChannels, c.ConvOutKernel, h, w);
        return t.ToEstimate(UNet2DConditionConfig.ClassName, size, (long)c.InChannels * size[0] * size[1]);
    }

    /// <summary>TimestepEmbedding: linear, activation, linear on one vector.</summary>
    private static void Mlp(CostTally t, long inFeatures, long outFeatures)
    {
        t.Linear(1, inFeatures, outFeatures);
        t.Tensor(outFeatures);
        t.Linear(1, outFeatures, outFeatures);
    }

    /// <summary>ResnetBlock2D without resampling (or nothing, when layer pruning removed it); twin of <see cref="UNet2DResources"/>'.</summary>
    private static void Resnet(CostTally t, UNet2DConditionConfig c, string path, long inChannels, long outChannels, long h, long w)
    {
        if (c.Structure.IsRemoved(path)) return;
        t.Layer(outChannels * h * w, () => ResnetBody(t, c, path, inChannels, outChannels, h, w));
    }

    private static void ResnetBody(CostTally t, UNet2DConditionConfig c, string path, long inChannels, long outChannels, long h, long w)
    {
        long inner = c.Structure.ResnetInner(path, (int)outChannels);
        long hw = h * w, temb = c.BlocksTimeEmbedDim;
        t.Weights(2 * inChannels);
        t.Tensor(inChannels * hw); // norm1
        t.Tensor(inChannels * hw); // activation
        t.Conv(inChannels, inner, 3, h, w);
        t.Tensor(temb); // activation of the time embedding
        t.Linear(1, temb, c.ResnetTimeScaleShift == "scale_shift" ? 2 * inner : inner);
        t.Weights(2 * inner);
        t.Tensor(inner * hw); // + time embedding
        t.Tensor(inner * hw); // norm2
        t.Tensor(inner * hw); // activation
        t.Conv(inner, outChannels, 3, h, w);
        if (inChannels != outChannels) t.Conv(inChannels, outChannels, 1, h, w);
        t.Tensor(outChannels * hw); // residual sum
    }

    /// <summary>
    /// A Transformer2DModel of down block <paramref name="block"/>'s settings over h x w tokens: GroupNorm, proj_in (a 1x1
    /// convolution or a linear layer: the same weights and MACs), BasicTransformerBlocks, proj_out, the residual.
    /// </summary>
    private static void Transformer(CostTally t, UNet2DConditionConfig c, string path, long channels, int block, bool onlyCrossAttention,
        long h, long w, long textTokens)
    {
        if (c.Structure.IsRemoved(path)) return;
        t.Layer(channels * h * w, () => TransformerBody(t, c, path, channels, block, onlyCrossAttention, h, w, textTokens));
    }

    private static void TransformerBody(CostTally t, UNet2DConditionConfig c, string path, long channels, int block, bool onlyCrossAttention,
        long h, long w, long textTokens)
    {
        long tokens = h * w;
        int heads = c.NumAttentionHeads(block);
        long headDim = channels / heads, inner = heads * headDim, crossDim = c.CrossAttentionDim[block];
        t.Weights(2 * channels);
        t.Tensor(channels * tokens);
        t.Linear(tokens, channels, inner);
        for (int j = 0; j < c.TransformerLayersPerBlock[block]; j++)
        {
            string b = $"{path}.transformer_blocks.{j}";
            long attn1Heads = c.Structure.Heads($"{b}.attn1", heads), attn2Heads = c.Structure.Heads($"{b}.attn2", heads);
            long ffInner = c.Structure.FeedForward($"{b}.ff", (int)(4 * inner));
            LayerNorm(t, inner, tokens);
            Attention(t, tokens, inner, attn1Heads, headDim, onlyCrossAttention ? textTokens : tokens, onlyCrossAttention ? crossDim : inner);
            LayerNorm(t, inner, tokens);
            Attention(t, tokens, inner, attn2Heads, headDim, textTokens, crossDim);
            LayerNorm(t, inner, tokens);
            t.Linear(tokens, inner, 2 * ffInner); // GEGLU: value and gate
            t.Tensor(tokens * ffInner);
            t.Linear(tokens, ffInner, inner);
            t.Tensor(tokens * inner); // residual sum
        }
        t.Linear(tokens, inner, channels);
        t.Tensor(channels * tokens); // residual sum
    }

    private static void LayerNorm(CostTally t, long dim, long tokens)
    {
        t.Weights(2 * dim);
        t.Tensor(dim * tokens);
    }

    /// <summary>q from the tokens, k and v from <paramref name="keyTokens"/> states of <paramref name="keyDim"/> (no q/k/v bias), to_out with bias.</summary>
    private static void Attention(CostTally t, long tokens, long dim, long heads, long headDim, long keyTokens, long keyDim)
    {
        long inner = heads * headDim;
        t.Linear(tokens, dim, inner, bias: false);
        t.Linear(keyTokens, keyDim, inner, bias: false);
        t.Linear(keyTokens, keyDim, inner, bias: false);
        t.CrossAttentionCore(tokens, keyTokens, heads, headDim);
        t.Linear(tokens, inner, dim);
        t.Tensor(tokens * dim); // residual sum
    }
}
