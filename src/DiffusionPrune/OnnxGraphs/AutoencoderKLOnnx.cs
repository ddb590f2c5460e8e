using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.OnnxGraphs;

/// <summary>
/// <see cref="AutoencoderKL.Decode"/> as an ONNX graph: diffusers' OnnxStableDiffusionPipeline <c>vae_decoder/model.onnx</c>,
/// <c>latent_sample</c> float32 [batch, latent_channels, height, width] (already divided by the scaling factor, as
/// Decode takes it) -> <c>sample</c> float32 [batch, out_channels, height * f, width * f]; post_quant_conv included.
/// Its twin is <see cref="VaeDecoder.forward"/>; the blocks are <see cref="UNet2DOnnx"/>'s ResNet and attention layers
/// without a time embedding.
/// </summary>
public static class AutoencoderKLOnnx
{
    public const string LatentInput = Inference.Onnx.OnnxPipelineLayout.LatentSample, SampleOutput = Inference.Onnx.OnnxPipelineLayout.DecodedSample;

    public static void BuildDecoder(OnnxGraph g, AutoencoderKL vae)
    {
        var c = vae.Config;
        var decoder = vae.Decoder;
        var latent = g.Input(LatentInput, DataType.Float, "batch", (long)c.LatentChannels, "height", "width");

        // 0. post_quant_conv: [B, latent, h, w] -> [B, latent, h, w]
        string sample = vae.PostQuantConv is { } postQuant ? OnnxLayers.Conv(g, postQuant, latent, "post_quant_conv") : latent;

        // 1. pre-process: [B, latent, h, w] -> [B, C_last, h, w]
        sample = OnnxLayers.Conv(g, decoder.ConvIn, sample, "decoder.conv_in");

        // 2. mid: ResNet, single-head attention, ResNet, no time embedding
        var mid = decoder.MidBlock;
        sample = OnnxLayers.ResnetBlock(g, (ResnetBlock2D)mid.Resnets[0], sample, null, "decoder.mid_block.resnets.0");
        for (int i = 1; i < mid.Resnets.Count; i++)
        {
            if (mid.Attentions?[i - 1] is Attention attention)
                sample = OnnxLayers.Attention(g, attention, sample, $"decoder.mid_block.attentions.{i - 1}", spatial: true);
            sample = OnnxLayers.ResnetBlock(g, (ResnetBlock2D)mid.Resnets[i], sample, null, $"decoder.mid_block.resnets.{i}");
        }

        // 3. up: each block but the last doubles H and W
        for (int b = 0; b < decoder.UpBlocks.Count; b++)
        {
            var block = decoder.UpBlocks[b];
            string path = $"decoder.up_blocks.{b}";
            for (int i = 0; i < block.Resnets.Count; i++)
                sample = OnnxLayers.ResnetBlock(g, block.Resnets[i], sample, null, $"{path}.resnets.{i}");
            if (block.Upsampler is { } upsampler)
                sample = OnnxLayers.Conv(g, upsampler.Conv, OnnxLayers.Nearest2x(g, sample, $"{path}.upsamplers.0"), $"{path}.upsamplers.0.conv");
        }

        // 4. post-process: [B, C0, H, W] -> [B, out, H, W]; diffusers' conv_act is SiLU whatever act_fn says
        sample = OnnxLayers.GroupNorm(g, decoder.ConvNormOut, sample, "decoder.conv_norm_out");
        sample = OnnxLayers.Activation(g, "silu", sample, "decoder.conv_act");
        sample = OnnxLayers.Conv(g, decoder.ConvOut, sample, "decoder.conv_out");
        g.Output(sample, SampleOutput, DataType.Float, "batch", (long)c.OutChannels, "image_height", "image_width");
    }
}
