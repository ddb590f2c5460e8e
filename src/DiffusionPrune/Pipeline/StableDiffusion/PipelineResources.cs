using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.TextEncoding;

namespace DiffusionPrune.Pipeline.StableDiffusion;

/// <summary>
/// What sampling a Stable Diffusion pipeline needs, from its configs and safetensors headers alone, before any weights
/// are read: the float32 weights of its text encoder, U-Net and VAE, and the larger of the U-Net's guided forward
/// (<see cref="ResourceEstimate.Inference"/> at twice the images) and the VAE decoder's. The U-Net's walk is its
/// family's; the VAE decoder's activations are approximated as <see cref="VaeFullResolutionMaps"/> feature maps of its
/// full-resolution block's width (its first block_out_channels) per image (a ResNet body's intermediates plus the kept block outputs), times the same
/// allowance for unnamed temporaries.
/// </summary>
public static class PipelineResources
{
    public const int VaeFullResolutionMaps = 12;

    /// <summary>Sampling <paramref name="images"/> images, with classifier-free guidance (the U-Net runs on twice as many) or without.</summary>
    public static ResourceNeed Sampling(string pipelineFolder, int images, bool guided)
    {
        if (images < 1) throw new ArgumentException("The number of images must be at least 1.", nameof(images));
        string folder = PipelineIndex.Load(pipelineFolder).Folder;
        var unet = ModelFamilies.EstimateFolder(Path.Combine(folder, "unet"));
        string vaeFolder = Path.Combine(folder, "vae"), textFolder = Path.Combine(folder, "text_encoder");
        var vae = AutoencoderKLConfig.FromJson(ConfigJson.Load(Path.Combine(vaeFolder, ModelFolder.Config)));

        long vaeParameters, textParameters;
        using (var weights = DiffusersModelLoader.OpenWeights(vaeFolder)) vaeParameters = Elements(weights);
        string textWeights = new[] { CLIPTextModel.WeightsFile, CLIPTextModel.Fp16WeightsFile }.Select(f => Path.Combine(textFolder, f)).FirstOrDefault(File.Exists)
            ?? throw new ModelFormatException($"'{textFolder}' has no {CLIPTextModel.WeightsFile}.");
        using (var weights = WeightsOnDisk.OpenFile(textWeights)) textParameters = Elements(weights);

        long factor = 1L << (vae.BlockOutChannels.Length - 1);
        long pixels = checked(unet.SampleSize[0] * factor * unet.SampleSize[^1] * factor);
        long decoder = checked((long)(VaeFullResolutionMaps * (long)vae.BlockOutChannels[0] * pixels * sizeof(float) * CostTally.UnnamedTemporaries));
        long denoiser = unet.Inference(guided ? 2 * images : images).ActivationBytes;
        long weightsBytes = ResourceEstimate.Scale(checked(unet.Parameters + vaeParameters + textParameters), sizeof(float));
        return new ResourceNeed($"sampling {images} image{(images == 1 ? "" : "s")}{(guided ? " with guidance" : "")}", weightsBytes,
            Math.Max(denoiser, ResourceEstimate.Scale(decoder, images)));
    }

    private static long Elements(WeightsOnDisk weights) => weights.Tensors.Values.Sum(t => t.Shape.Aggregate(1L, (a, b) => checked(a * b)));
}
