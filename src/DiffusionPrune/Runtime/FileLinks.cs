using System.Runtime.InteropServices;

namespace DiffusionPrune.Runtime;

/// <summary>
/// Copies of large read-only files that cost no disk: a hard link where the file system allows one (same volume, Linux or
/// macOS), else an ordinary copy. Used for the components a pruned pipeline shares with its source (text encoder, VAE):
/// the two folders then hold the same bytes once. Every writer in this library replaces files (write, then rename) rather
/// than writing into them, so a later write to either folder never changes the other.
/// </summary>
public static partial class FileLinks
{
    [LibraryImport("libc", EntryPoint = "link", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Link(string existing, string created);

    /// <summary>Hard-links (or copies) <paramref name="source"/> to <paramref name="destination"/>; true when linked.</summary>
    public static bool LinkOrCopy(string source, string destination)
    {
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
        {
            try
            {
                if (Link(source, destination) == 0) return true;
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
                // no libc link(): copy
            }
        }
        File.Copy(source, destination);
        return false;
    }

    /// <summary>
    /// <see cref="LinkOrCopy(string, string)"/> for every file under <paramref name="source"/>, recreating its folders under
    /// <paramref name="destination"/>; returns how many files were linked and how many copied.
    /// </summary>
    public static (int Linked, int Copied) LinkOrCopyFolder(string source, string destination)
    {
        int linked = 0, copied = 0;
        Directory.CreateDirectory(destination);
        foreach (var file in Directory.EnumerateFiles(source))
            if (LinkOrCopy(file, Path.Combine(destination, Path.GetFileName(file)))) linked++; else copied++;
        foreach (var folder in Directory.EnumerateDirectories(source))
        {
            var (l, c) = LinkOrCopyFolder(folder, Path.Combine(destination, Path.GetFileName(folder)));
            linked += l;
            copied += c;
        }
        return (linked, copied);
    }
}
