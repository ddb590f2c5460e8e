namespace DiffusionPrune.Runtime;

/// <summary>
/// Writing an output folder whole or not at all: the files go into a hidden sibling folder, which is renamed to the
/// target only when every file is written. A run that fails or is cancelled part-way removes its sibling and leaves
/// the target as it was (absent, or the previous output), never half a model or half a bundle.
/// </summary>
public static class AtomicFolder
{
    /// <summary>The prefix of the siblings being written; a crash (kill -9) can leave one behind, and the next write to the same target removes it.</summary>
    public const string PartialPrefix = ".dprune-partial-";

    /// <summary>
    /// Calls <paramref name="write"/> with an empty folder beside <paramref name="target"/>, then makes that folder the
    /// target. An existing target is replaced only when <paramref name="replaceable"/> says it holds a previous output
    /// of the same kind (or it is empty); otherwise nothing is written and the caller's one-line error is raised.
    /// </summary>
    /// <param name="what">What the folder is, for the message: "the pruned model", "the bundle".</param>
    public static void Write(string target, string what, Func<string, bool> replaceable, Action<string> write, CancellationToken cancel = default)
    {
        string full = Check(target, what, replaceable);
        string parent = Path.GetDirectoryName(full) ?? throw new ArgumentException($"--output '{target}' has no parent folder.");
        Directory.CreateDirectory(parent);
        string name = Path.GetFileName(full);
        RemoveStale(parent, name);
        string partial = Path.Combine(parent, $"{PartialPrefix}{name}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        string? previous = null;
        try
        {
            Directory.CreateDirectory(partial);
            write(partial);
            cancel.ThrowIfCancellationRequested();
            if (Directory.Exists(full))
            {
                previous = Path.Combine(parent, $"{PartialPrefix}{name}-old-{Guid.NewGuid():N}");
                Directory.Move(full, previous);
            }
            Directory.Move(partial, full);
        }
        catch
        {
            if (previous is not null && !Directory.Exists(full)) Directory.Move(previous, full); // put the earlier output back
            previous = null;
            throw;
        }
        finally
        {
            TryDelete(partial);
            if (previous is not null) TryDelete(previous);
        }
    }

    /// <summary>
    /// The checks <see cref="Write"/> makes before writing, for a caller to make before a long run (a prune) rather than
    /// after it; returns the target's full path.
    /// </summary>
    public static string Check(string target, string what, Func<string, bool> replaceable)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(target));
        if (File.Exists(full))
            throw new ArgumentException($"--output '{target}' is a file; give a folder for {what}.");
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any() && !replaceable(full))
            throw new ArgumentException($"--output '{target}' exists and is not an earlier output of this kind; give a new folder for {what} " +
                "(its files would be replaced).");
        return full;
    }

    /// <summary>
    /// Siblings of <paramref name="name"/> left by a writer that died: <c>{prefix}{name}-{pid}-{guid}</c> or
    /// <c>{prefix}{name}-old-{guid}</c> exactly, so a live write to a longer name ("out-2" beside "out") is never
    /// taken for one; another process's live write is left alone while that process runs.
    /// </summary>
    private static void RemoveStale(string parent, string name)
    {
        var own = new System.Text.RegularExpressions.Regex(
            "^" + System.Text.RegularExpressions.Regex.Escape(PartialPrefix + name) + "-(?:(?<pid>[0-9]+)|old)-[0-9a-f]{32}$");
        foreach (var folder in Directory.EnumerateDirectories(parent, $"{PartialPrefix}{name}-*"))
        {
            var match = own.Match(Path.GetFileName(folder));
            if (!match.Success) continue; // another target's write
            if (match.Groups["pid"].Success && int.TryParse(match.Groups["pid"].Value, out int pid) && IsRunning(pid)) continue;
            TryDelete(folder);
        }
    }

    private static bool IsRunning(int pid)
    {
        if (pid == Environment.ProcessId) return false; // this process is not writing it now: it is a leftover of an earlier call
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    private static void TryDelete(string folder)
    {
        try
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
        catch (IOException)
        {
            // best effort: a leftover sibling is removed by the next write to the same target
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
