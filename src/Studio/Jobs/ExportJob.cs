using System.Globalization;
using System.IO.Compression;
using DiffusionPrune.Export;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Studio.Export;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Exports a model as a bundle (diffusers safetensors + model.onnx, scheduler config, model card) through the core's
/// <see cref="DiffusionPipeline"/>, then zips it beside the folder for download (<c>exports/NAME.zip</c>). A Stable
/// Diffusion pipeline exports as an ONNX pipeline (<see cref="DiffusionPipeline.ExportStableDiffusionAsync"/>:
/// text_encoder, unet and vae_decoder model.onnx, tokenizer, scheduler, model_index.json and a model card) into the same
/// exports folder, zipped the same way; its request's formats are onnx alone. The zip is
/// written under a temporary name and renamed when whole, so a download never gets half a file.
/// </summary>
public sealed class ExportJob(ExportRequest request) : StudioJob
{
    /// <summary>The request the job runs.</summary>
    public ExportRequest Request { get; } = request;

    /// <inheritdoc />
    public override string Kind => "export";

    /// <inheritdoc />
    public override string? OutputPath => Request.OutputPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(Request);

    /// <summary>The bundle's name: its folder's.</summary>
    public string BundleName => Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.OutputPath));

    /// <inheritdoc />
    public override string Name => StableDiffusionPipeline.IsStableDiffusionFolder(Request.ModelPath)
        ? $"Export the pipeline {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath)))} as an ONNX pipeline"
        : $"Export {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath)))} as {string.Join(" + ", Request.Formats).ToLowerInvariant()}";

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        using var pipeline = new DiffusionPipeline();
        string text;
        if (StableDiffusionPipeline.IsStableDiffusionFolder(Request.ModelPath))
        {
            var onnx = await pipeline.ExportStableDiffusionAsync(Request.ModelPath, Request.OutputPath, Request.Formats, PruneJob.Forward(progress, 0, 0.8), cancellationToken);
            string mib = await ZipAsync(onnx.OutputPath, progress, cancellationToken);
            text = string.Create(CultureInfo.InvariantCulture,
                $"Exported the Stable Diffusion pipeline as an ONNX pipeline ({string.Join(", ", onnx.Components.Select(c => c.Folder))}; U-Net {onnx.UNetParameters:N0} parameters, " +
                $"{onnx.UNetMacs:N0} MACs per image{(onnx.Pruned ? ", pruned" : "")}): {string.Join(", ", onnx.Files)}; zipped to {mib} MiB.");
        }
        else
        {
            var result = await pipeline.ExportAsync(Request, PruneJob.Forward(progress, 0, 0.8), cancellationToken);
            string mib = await ZipAsync(result.OutputPath, progress, cancellationToken);
            text = string.Create(CultureInfo.InvariantCulture,
                $"Exported {result.ClassName} ({result.Parameters:N0} parameters, {result.Macs:N0} MACs per image): {string.Join(", ", result.Files)}; zipped to {mib} MiB.");
        }
        progress.Report(new JobProgress(1, text, Note: true));
        Result = text;
    }

    /// <summary>Zips <paramref name="folder"/> beside it (<c>NAME.zip</c>, written under a temporary name, then renamed); returns its size in MiB.</summary>
    private static async Task<string> ZipAsync(string folder, IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        progress.Report(new JobProgress(0.85, "zipping the bundle"));
        string zip = BundleFolders.ZipOf(folder), partial = zip + ".partial";
        File.Delete(partial);
        await Task.Run(() => ZipFile.CreateFromDirectory(folder, partial, CompressionLevel.Optimal, includeBaseDirectory: true), cancellationToken);
        File.Move(partial, zip, overwrite: true);
        return (new FileInfo(zip).Length / 1048576.0).ToString("F1", CultureInfo.InvariantCulture);
    }
}
