using System.Globalization;

namespace DiffusionPrune.Runtime;

/// <summary>A job's estimated memory is over the limit: refused before anything is allocated (a user error).</summary>
public sealed class ResourceLimitException(string message) : Exception(Formats.Messages.OneLine(message));

/// <summary>
/// How much memory a job may use: <c>--max-memory</c> (or <c>DPRUNE_MAX_MEMORY</c>) when set, otherwise what the machine
/// has available now (Linux: <c>MemAvailable</c>, lowered by a cgroup's <c>memory.max</c>; elsewhere the runtime's view).
/// </summary>
public static class MemoryLimit
{
    /// <summary>The environment variable that sets the limit for every face (the CLI's <c>--max-memory</c> sets <see cref="Override"/>).</summary>
    public const string EnvironmentVariable = "DPRUNE_MAX_MEMORY";

    /// <summary>A limit set for this process (<c>--max-memory</c>, the Studio's setting); null uses the environment or the machine.</summary>
    public static long? Override { get; set; }

    /// <summary>The limit in bytes and where it comes from ("--max-memory", "DPRUNE_MAX_MEMORY", "available memory").</summary>
    public static (long Bytes, string Source) Current()
    {
        if (Override is long set) return (set, "--max-memory");
        if (Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } text)
            return (Parse(text, EnvironmentVariable), EnvironmentVariable);
        return (Available(), "available memory");
    }

    /// <summary>Memory the machine can give a new allocation now, in bytes.</summary>
    public static long Available()
    {
        long? available = null;
        try
        {
            if (File.Exists("/proc/meminfo"))
                foreach (var line in File.ReadLines("/proc/meminfo"))
                    if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    {
                        var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                        available = long.Parse(parts[1], CultureInfo.InvariantCulture) * 1024;
                        break;
                    }
            // A container's limit is below what the host reports.
            if (ReadCgroupBytes("/sys/fs/cgroup/memory.max") is long max)
            {
                // memory.current counts the page cache too; its inactive part is reclaimed before the limit is hit
                long used = Math.Max(0, (ReadCgroupBytes("/sys/fs/cgroup/memory.current") ?? 0) - (CgroupStat("/sys/fs/cgroup/memory.stat", "inactive_file") ?? 0));
                long room = Math.Max(0, max - used);
                available = available is long a ? Math.Min(a, room) : room;
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        catch (FormatException) { }
        return available ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
    }

    private static long? CgroupStat(string path, string key)
    {
        if (!File.Exists(path)) return null;
        foreach (var line in File.ReadLines(path))
            if (line.StartsWith(key + " ", StringComparison.Ordinal)
                && long.TryParse(line.AsSpan(key.Length + 1), NumberStyles.None, CultureInfo.InvariantCulture, out long value))
                return value;
        return null;
    }

    private static long? ReadCgroupBytes(string path)
    {
        if (!File.Exists(path)) return null;
        string text = File.ReadAllText(path).Trim();
        return long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long bytes) ? bytes : null; // "max" = none
    }

    /// <summary>
    /// Parses a size: a number of bytes, or a number with a unit (K, M, G, T with an optional B or iB; all powers of 1024,
    /// as free(1) and the kernel count), e.g. <c>512M</c>, <c>8GB</c>, <c>1.5GiB</c>. <paramref name="what"/> names the setting in errors.
    /// </summary>
    public static long Parse(string text, string what = "--max-memory")
    {
        string t = text.Trim();
        int end = 0;
        while (end < t.Length && (char.IsAsciiDigit(t[end]) || t[end] == '.')) end++;
        string unit = t[end..].Trim().ToUpperInvariant();
        long scale = unit switch
        {
            "" or "B" => 1,
            "K" or "KB" or "KI" or "KIB" => 1L << 10, // "Ki", "Mi", ... as Kubernetes writes them
            "M" or "MB" or "MI" or "MIB" => 1L << 20,
            "G" or "GB" or "GI" or "GIB" => 1L << 30,
            "T" or "TB" or "TI" or "TIB" => 1L << 40,
            _ => 0,
        };
        if (end == 0 || scale == 0 || !double.TryParse(t[..end], NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double value)
            || !(value * scale >= 1) || value * scale > long.MaxValue / 2)
            throw new ArgumentException($"{what}: '{text}' is not a memory size of at least one byte (examples: 512M, 8G, 1.5GiB, 2Gi).");
        return (long)(value * scale);
    }

    /// <summary>A byte count for messages: "1.23 GiB", "512.0 MiB".</summary>
    public static string Format(double bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        int u = 0;
        while (Math.Abs(bytes) >= 1024 && u < units.Length - 1) { bytes /= 1024; u++; }
        return u == 0 ? string.Create(CultureInfo.InvariantCulture, $"{bytes:F0} B") : string.Create(CultureInfo.InvariantCulture, $"{bytes:F2} {units[u]}");
    }
}
