using System.Security.Cryptography;

namespace DiffusionPrune.Formats;

/// <summary>
/// Names a model folder or file in what users share (model cards, reports, exported configs) by its name and a content
/// hash, never by where it sat on one machine: "mnist-unet (weights sha256 3f2a9c0d1e4b)".
/// </summary>
public static class SourceIdentity
{
    /// <summary>The weights (or, failing those, the config) whose hash identifies a model folder, in order of preference.</summary>
    private static readonly string[] IdentifyingFiles =
        [ModelFolder.Weights, ModelFolder.WeightsStem + ".fp16.safetensors", ModelFolder.OnnxModel, ModelFolder.WeightsIndex, ModelFolder.Config];

    /// <summary>"name (weights sha256 xxxxxxxxxxxx)" for a folder, "name (sha256 xxxxxxxxxxxx)" for a file; the name alone if nothing can be read.</summary>
    public static string Describe(string path)
    {
        string trimmed = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        string name = Path.GetFileName(trimmed);
        if (File.Exists(trimmed)) return $"{name} (sha256 {ShortHash(trimmed)})";
        if (!Directory.Exists(trimmed)) return name;
        foreach (var candidate in IdentifyingFiles)
        {
            string file = Path.Combine(trimmed, candidate);
            if (!File.Exists(file)) continue;
            string what = candidate == ModelFolder.Config ? "config" : candidate.EndsWith(".index.json", StringComparison.Ordinal) ? "weights index" : "weights";
            return $"{name} ({what} sha256 {ShortHash(file)})";
        }
        return name;
    }

    /// <summary>A file's folder and name with its hash: "mnist-unet/scheduler_config.json (sha256 ...)".</summary>
    public static string DescribeFile(string file)
    {
        string full = Path.GetFullPath(file);
        string folder = Path.GetFileName(Path.GetDirectoryName(full) ?? "");
        string name = folder.Length > 0 ? $"{folder}/{Path.GetFileName(full)}" : Path.GetFileName(full);
        return File.Exists(full) ? $"{name} (sha256 {ShortHash(full)})" : name;
    }

    /// <summary>The first 12 hex digits of the file's SHA-256.</summary>
    public static string ShortHash(string file)
    {
        using var stream = File.OpenRead(file);
        return Convert.ToHexString(SHA256.HashData(stream))[..12].ToLowerInvariant();
    }
}
