namespace DiffusionPrune.Studio.Catalog;

/// <summary>One model folder under <c>samples/models/</c>, as the Studio lists it.</summary>
/// <param name="Name">The folder name, e.g. <c>ddpm-cifar10-32</c>.</param>
/// <param name="FolderPath">Absolute path of the folder.</param>
/// <param name="ClassName">
/// <c>_class_name</c> from its <c>config.json</c> (diffusers' spelling, e.g. <c>UNet2DModel</c>), or from a pipeline
/// folder's <c>model_index.json</c> (<c>StableDiffusionPipeline</c>);
/// null when the config is missing, unreadable or has no such field — see <paramref name="Problem"/>.
/// </param>
/// <param name="SafetensorsBytes">Total size of the folder's <c>*.safetensors</c> files (a pipeline's: those of all its components); 0 when there are none.</param>
/// <param name="Problem">What is wrong with the folder and how to fix it; null when it looks usable.</param>
public sealed record ModelSummary(
    string Name,
    string FolderPath,
    string? ClassName,
    long SafetensorsBytes,
    string? Problem)
{
    /// <summary>
    /// A Stable Diffusion pipeline folder (<c>model_index.json</c>: tokenizer, text encoder, U-Net, VAE, scheduler), listed
    /// as one model: it samples from a prompt, prunes and distils its U-Net, exports as an ONNX pipeline and is evaluated
    /// against a reference pipeline (paired SSIM and PSNR, no FID-proxy).
    /// </summary>
    public bool IsPipeline => ClassName == DiffusionPrune.Pipeline.StableDiffusion.StableDiffusionPipeline.ClassName;
}
