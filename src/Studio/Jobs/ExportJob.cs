using System.Globalization;
using System.IO.Compression;
using DiffusionPrune.Export;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Studio.Export;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Exports a model as a bundle (diffusers safetensors + model.onnx, scheduler config, model card) through the core's
/// <see cref="DiffusionPipeline"/>, then zips it beside the folder for download (<c>exports/NAME.zip</c>). The zip is
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
    public override string Name => $"Export {OutputNames.Shown(Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.ModelPath)))} as {string.Join(" + ", Request.Formats).ToLowerInvariant()}";

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        using var pipeline = new DiffusionPipeline();
        var result = await pipeline.ExportAsync(Request, PruneJob.Forward(progress, 0, 0.8), cancellationToken);
        progress.Report(new JobProgress(0.85, "zipping the bundle"));
        string zip = BundleFolders.ZipOf(result.OutputPath), partial = zip + ".partial";
        File.Delete(partial);
        await Task.Run(() => ZipFile.CreateFromDirectory(result.OutputPath, partial, CompressionLevel.Optimal, includeBaseDirectory: true), cancellationToken);
        File.Move(partial, zip, overwrite: true);
        string text = string.Create(CultureInfo.InvariantCulture,
            $"Exported {result.ClassName} ({result.Parameters:N0} parameters, {result.Macs:N0} MACs per image): {string.Join(", ", result.Files)}; zipped to {new FileInfo(zip).Length / 1048576.0:F1} MiB.");
        progress.Report(new JobProgress(1, text, Note: true));
        Result = text;
    }
}
