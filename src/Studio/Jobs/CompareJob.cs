using System.Globalization;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Pipeline;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Compares 2 to 6 models from the same noise through the core's <see cref="DiffusionPipeline"/> (see
/// <see cref="ModelComparison"/>) into a folder under <c>compared/</c>, which the Compare page then shows. Cancelling
/// stops between models; an interrupted comparison runs again from the start.
/// </summary>
public sealed class CompareJob(CompareRequest request) : StudioJob
{
    /// <summary>The request the job runs.</summary>
    public CompareRequest Request { get; } = request;

    /// <inheritdoc />
    public override string Kind => "compare";

    /// <inheritdoc />
    public override string? OutputPath => Request.OutputPath;

    /// <inheritdoc />
    public override string? RequestJson => System.Text.Json.JsonSerializer.Serialize(Request);

    /// <summary>The comparison's name: its folder's, as the Compare page addresses it.</summary>
    public string ComparisonName => Path.GetFileName(Path.TrimEndingDirectorySeparator(Request.OutputPath));

    /// <inheritdoc />
    public override string Name => $"Compare {string.Join(", ", Enumerable.Range(0, Request.ModelPaths.Count).Select(Request.NameOf))}";

    /// <inheritdoc />
    public override async Task RunAsync(IProgress<JobProgress> progress, CancellationToken cancellationToken)
    {
        using var pipeline = new DiffusionPipeline();
        var report = await pipeline.CompareAsync(Request, PruneJob.Forward(progress, 0, 1), cancellationToken);
        var reference = report.Models[0];
        var inv = CultureInfo.InvariantCulture;
        string fids = string.Join(", ", report.Models.Select(m => string.Create(inv, $"{m.Name} {m.Fid:F1} [{m.FidLower:F1}, {m.FidUpper:F1}]")));
        string ssims = string.Join(", ", report.Models.Skip(1).Select(m => string.Create(inv, $"{m.Name} {m.Ssim:F3}")));
        string result = string.Create(inv,
            $"Compared {report.Models.Count} models ({report.Samples} images x {report.Steps} steps each) in {report.Seconds:F0} s. FID-proxy: {fids}; SSIM to {reference.Name}: {ssims}.");
        progress.Report(new JobProgress(1, result, Note: true));
        Result = result;
    }
}
