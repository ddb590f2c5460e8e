using System.Runtime.InteropServices;

namespace DiffusionPrune.Runtime;

/// <summary>Publishing a finished file under a name only if that name is free, as one atomic step.</summary>
public static unsafe class AtomicFile
{
    private const int EEXIST = 17; // Linux and macOS

    /// <summary>
    /// Makes <paramref name="complete"/> (a fully written file) appear as <paramref name="target"/> unless
    /// <paramref name="target"/> exists, and removes <paramref name="complete"/>. Returns false, leaving both as they
    /// were, when <paramref name="target"/> exists. Atomic: of two callers racing for one target exactly one wins, and a
    /// reader never sees a half-written target. On Unix this is link(2), which fails with EEXIST (.NET's
    /// <c>File.Move(…, overwrite: false)</c> is a stat and a rename(2) there, which two callers can both pass); on
    /// Windows it is MoveFileEx without MOVEFILE_REPLACE_EXISTING.
    /// </summary>
    public static bool TryPublish(string complete, string target)
    {
        if (OperatingSystem.IsWindows())
        {
            try
            {
                File.Move(complete, target, overwrite: false);
                return true;
            }
            catch (IOException) when (File.Exists(target))
            {
                return false;
            }
        }
        var link = (delegate* unmanaged<byte*, byte*, int>)NativeEnvironment.Function("link");
        int result;
        fixed (byte* from = NativeEnvironment.Utf8(Path.GetFullPath(complete)))
        fixed (byte* to = NativeEnvironment.Utf8(Path.GetFullPath(target)))
            result = link(from, to);
        if (result != 0)
        {
            int errno = Marshal.GetLastSystemError();
            if (errno == EEXIST || File.Exists(target)) return false;
            throw new IOException($"Could not publish '{complete}' as '{target}': link(2) failed with errno {errno} " +
                "(the folder must allow hard links, as local disks, NFS, CephFS and Lustre do).");
        }
        File.Delete(complete);
        return true;
    }

    /// <summary>
    /// Writes <paramref name="bytes"/> to <paramref name="path"/> whole: into a temporary file of this process's own
    /// beside it, then renamed over the target, so a reader (or a racing writer) never sees half a file.
    /// </summary>
    public static void Replace(string path, ReadOnlySpan<byte> bytes)
    {
        string temporary = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write)) stream.Write(bytes);
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }

    /// <summary>
    /// Lets <paramref name="write"/> write a file of this process's own beside <paramref name="path"/>, then renames it
    /// over the target: for writers that take a path (PNG, safetensors). A writer that fails or is cancelled leaves the
    /// target as it was.
    /// </summary>
    public static void Replace(string path, Action<string> write)
    {
        string full = Path.GetFullPath(path);
        if (Path.GetDirectoryName(full) is { } folder) Directory.CreateDirectory(folder);
        // the extension is kept last: writers that pick a format by it (PNG) still do
        string temporary = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileNameWithoutExtension(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp{Path.GetExtension(full)}");
        try
        {
            write(temporary);
            File.Move(temporary, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }

    /// <summary><see cref="Replace(string, ReadOnlySpan{byte})"/> for UTF-8 text.</summary>
    public static void Replace(string path, string text) => Replace(path, System.Text.Encoding.UTF8.GetBytes(text));
}
