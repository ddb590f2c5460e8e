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

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nuint length, int advice);

    private const int MadvDontNeed = 4;
    private static bool _unavailable, _madviseUnavailable;

    /// <summary>
    /// Drops the pages of a read-only file mapping that cover [<paramref name="address"/>, + <paramref name="length"/>) from
    /// this process's resident set (Linux). They stay in the kernel's page cache; touching them again faults them back in
    /// from it. A no-op elsewhere. Pages only partly inside the range are dropped too, which is harmless for a read-only
    /// file mapping.
    /// </summary>
    public static void ReleaseMappedPages(nint address, long length)
    {
        if (_madviseUnavailable || length <= 0 || !OperatingSystem.IsLinux()) return;
        long page = Environment.SystemPageSize;
        long start = address & ~(page - 1), end = (address + length + page - 1) & ~(page - 1);
        try
        {
            Madvise((nint)start, (nuint)(end - start), MadvDontNeed);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            _madviseUnavailable = true;
        }
    }

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

    /// <summary>Resident file-backed pages (RssFile: mapped files such as safetensors weights) in bytes, or null where /proc is absent.</summary>
    public static long? ResidentFileBytes() => ReadStatus("RssFile:");

    /// <summary>Resident anonymous memory (RssAnon: tensors and the heap) in bytes, or null where /proc is absent.</summary>
    public static long? ResidentAnonymousBytes() => ReadStatus("RssAnon:");

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
