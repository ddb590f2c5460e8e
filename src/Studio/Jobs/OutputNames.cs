using System.Globalization;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// Names the folder a job writes: the stem, then the UTC time to the millisecond. Two jobs started in the same
/// millisecond (two tabs, a script posting to the API) never share a folder: a name handed out in this process, or
/// already on disk, gets "-2", "-3", ... appended.
/// </summary>
public static partial class OutputNames
{
    private static readonly Lock Gate = new();
    private static readonly HashSet<string> Given = new(StringComparer.Ordinal);

    [System.Text.RegularExpressions.GeneratedRegex(@"-\d{8}-\d{6}(-\d{3})?(-\d+)?$")]
    private static partial System.Text.RegularExpressions.Regex Stamp();

    /// <summary>
    /// A model's catalog name as figures show it: its last segment without the time <see cref="NewFolder"/> appended
    /// ("pruned/mnist-unet-magnitude-20-20261203-121314-123" is "mnist-unet-magnitude-20").
    /// </summary>
    public static string Shown(string catalogName)
    {
        string last = catalogName[(catalogName.LastIndexOf('/') + 1)..];
        string stem = Stamp().Replace(last, "");
        return stem.Length > 0 ? stem : last;
    }

    /// <summary>A new folder path under <paramref name="parent"/> for <paramref name="stem"/> (slashes become '-').</summary>
    public static string NewFolder(string parent, string stem)
    {
        string baseName = string.Create(CultureInfo.InvariantCulture, $"{stem.Replace('/', '-').Replace('\\', '-')}-{DateTime.UtcNow:yyyyMMdd-HHmmss-fff}");
        lock (Gate)
        {
            string path = Path.Combine(parent, baseName);
            for (int n = 2; Given.Contains(path) || Directory.Exists(path) || File.Exists(path); n++)
                path = Path.Combine(parent, string.Create(CultureInfo.InvariantCulture, $"{baseName}-{n}"));
            Given.Add(path);
            return path;
        }
    }
}
