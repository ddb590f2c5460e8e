using System.Runtime.InteropServices;

namespace DiffusionPrune.Runtime;

/// <summary>
/// glibc keeps freed native memory in its arenas; without a trim, libtorch's per-step allocations make
/// the resident size grow by ~100 MB a step. Call <see cref="Trim"/> after every training step.
/// </summary>
public static partial class NativeMemory
{
    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    private static bool _unavailable;

    public static void Trim()
    {
        if (_unavailable || !OperatingSystem.IsLinux()) return;
        try
        {
            MallocTrim(0);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            _unavailable = true; // musl or another libc without malloc_trim
        }
    }

    /// <summary>Peak resident set size of this process in bytes (VmHWM), or null where /proc is absent.</summary>
    public static long? PeakResidentBytes() => ReadStatus("VmHWM:");

    /// <summary>Current resident set size in bytes (VmRSS), or null where /proc is absent.</summary>
    public static long? ResidentBytes() => ReadStatus("VmRSS:");

    private static long? ReadStatus(string field)
    {
        const string path = "/proc/self/status";
        if (!File.Exists(path)) return null;
        foreach (var line in File.ReadLines(path))
        {
            if (!line.StartsWith(field, StringComparison.Ordinal)) continue;
            var parts = line[field.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length >= 1 && long.TryParse(parts[0], out long kb)) return kb * 1024;
        }
        return null;
    }
}
