using System.Collections.Concurrent;
using System.Security.Cryptography;
using DiffusionPrune.Formats;

namespace DiffusionPrune.Export;

/// <summary>
/// ONNX bundles of model folders, exported on first use and kept under a cache folder by the hash of the model's config,
/// scheduler config and weights, so a preview through ONNX Runtime exports a model once and a changed model gets a new bundle. The hash
/// of a file is remembered by its path, size and time, so a large model is not read again on every use.
/// </summary>
public static class OnnxBundleCache
{
    private static readonly ConcurrentDictionary<(string Path, long Size, DateTime Written), string> Hashes = new();
    private static readonly ConcurrentDictionary<string, SemaphoreSlim> Exporting = new(StringComparer.Ordinal);

    /// <summary>Changes when the exporter's output changes, so older bundles are not reused.</summary>
    private const string ExporterVersion = "onnx-export-1";

    /// <summary>The cache key of a model folder: its name and 16 hex digits of SHA-256 over its config, scheduler config and weights.</summary>
    public static string Key(string modelFolder)
    {
        string folder = Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelFolder));
        // everything the bundle is made from: the config, every weights file and index, the scheduler config it ships
        var files = new[] { ModelFolder.Config, ModelFolder.SchedulerConfig, ModelFolder.WeightsIndex }.Select(f => Path.Combine(folder, f))
            .Concat(Directory.EnumerateFiles(folder, "*.safetensors").Order(StringComparer.Ordinal));
        var parts = files.Where(File.Exists).Select(f => Path.GetFileName(f) + ":" + HashOf(f)).Prepend(ExporterVersion);
        string combined = Convert.ToHexString(SHA256.HashData(System.Text.Encoding.ASCII.GetBytes(string.Join("|", parts))))[..16].ToLowerInvariant();
        string name = new(Path.GetFileName(folder).Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '-').ToArray());
        return $"{name}-{combined}";
    }

    /// <summary>
    /// The bundle of <paramref name="modelFolder"/> under <paramref name="cacheRoot"/> (model.onnx, onnx_model.json,
    /// scheduler_config.json, model card), exported now when it is not there yet. Concurrent callers wait for one export.
    /// </summary>
    public static string Ensure(string modelFolder, string cacheRoot, Action<string>? log = null, CancellationToken cancel = default)
    {
        string bundle = Path.Combine(Path.GetFullPath(cacheRoot), Key(modelFolder));
        if (IsComplete(bundle)) return bundle;
        var gate = Exporting.GetOrAdd(bundle, _ => new SemaphoreSlim(1, 1));
        gate.Wait(cancel);
        try
        {
            if (IsComplete(bundle)) return bundle;
            log?.Invoke($"exporting an ONNX bundle for ONNX Runtime (first use of this model): {Path.GetFileName(bundle)}");
            ModelExporter.Export(new ExportRequest { ModelPath = modelFolder, OutputPath = bundle, Formats = [ExportFormat.Onnx] }, log, cancel);
            return bundle;
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>
    /// <paramref name="request"/> to run in ONNX Runtime: its model and reference (when there is one) replaced by their
    /// bundles under <paramref name="cacheRoot"/>, exported on first use (off the caller's thread).
    /// </summary>
    public static async Task<Evaluation.EvalRequest> ForOnnxAsync(Evaluation.EvalRequest request, string cacheRoot, Action<string>? log = null,
        CancellationToken cancel = default)
    {
        string model = await Task.Run(() => Ensure(request.ModelPath, cacheRoot, log, cancel), cancel).ConfigureAwait(false);
        string? reference = request.ReferenceModelPath is { } r ? await Task.Run(() => Ensure(r, cacheRoot, log, cancel), cancel).ConfigureAwait(false) : null;
        return request with { ModelPath = model, ReferenceModelPath = reference, Backend = "onnx", Provider = "auto" };
    }

    private static bool IsComplete(string bundle) =>
        File.Exists(Path.Combine(bundle, ModelFolder.OnnxInfo)) && File.Exists(Path.Combine(bundle, ModelFolder.OnnxModel));

    private static string HashOf(string file)
    {
        var info = new FileInfo(file);
        return Hashes.GetOrAdd((info.FullName, info.Length, info.LastWriteTimeUtc), _ =>
        {
            using var stream = File.OpenRead(file);
            return Convert.ToHexString(SHA256.HashData(stream));
        });
    }
}
