using System.Diagnostics;
using System.Text.Json;
using DiffusionPrune.Runtime;

namespace DiffusionPrune.Batch;

/// <summary>
/// A worker's claim on one batch item: a lock file beside the item's folder, created only if absent (written whole,
/// then published with <see cref="AtomicFile.TryPublish"/>, which fails when the file exists, as O_EXCL does), so two workers
/// sharing an output folder (shards that overlap, a restarted pod, NFS or a mounted bucket) never run the same item at
/// once. The owner refreshes the file's time while it works; a claim is stale, and
/// may be taken over, when its owner is a process of this host that is gone, or when it has not been refreshed for
/// <c>lease</c> (an owner on another host that died). Taking over renames the stale file away first, which only
/// one taker can do.
/// </summary>
public sealed class ItemClaim : IDisposable
{
    /// <summary>How long a claim lives without a refresh; owners refresh it every quarter of this.</summary>
    public static readonly TimeSpan DefaultLease = TimeSpan.FromMinutes(5);

    private readonly string _path;
    private readonly string _token;
    private readonly Timer _heartbeat;
    private bool _disposed;

    private ItemClaim(string path, string token, TimeSpan lease)
    {
        _path = path;
        _token = token;
        var period = TimeSpan.FromTicks(Math.Max(TimeSpan.FromSeconds(1).Ticks, lease.Ticks / 4));
        _heartbeat = new Timer(_ => Refresh(), null, period, period);
    }

    /// <summary>What a claim file says about its owner.</summary>
    public sealed record Owner(string Host, int Pid, DateTime ProcessStart, string Token, DateTime ClaimedAt)
    {
        public override string ToString() => $"{Host} pid {Pid} since {ClaimedAt:u}";
    }

    /// <summary>Claims the item, or returns null with the live owner when another worker holds it.</summary>
    public static ItemClaim? TryAcquire(string path, TimeSpan lease, out Owner? heldBy)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        for (int attempt = 0; attempt < 3; attempt++)
        {
            if (TryCreate(path, lease) is { } claim)
            {
                heldBy = null;
                return claim;
            }
            var owner = Read(path);
            if (owner is not null && !IsStale(path, owner, lease))
            {
                heldBy = owner;
                return null;
            }
            // Stale (or unreadable, e.g. half-written by a worker killed at that instant and older than the lease):
            // move it aside; of several takers only one rename succeeds, and each then races to create its own again.
            if (owner is null && DateTime.UtcNow - SafeWriteTime(path) < lease)
            {
                heldBy = null;
                return null; // being written right now: leave it to its writer
            }
            string aside = $"{path}.stale-{Guid.NewGuid():N}";
            try
            {
                File.Move(path, aside);
                File.Delete(aside);
            }
            catch (FileNotFoundException) { /* another taker moved it first */ }
            catch (IOException) { /* likewise */ }
        }
        heldBy = Read(path);
        return null;
    }

    private static ItemClaim? TryCreate(string path, TimeSpan lease)
    {
        using var process = Process.GetCurrentProcess();
        var owner = new Owner(Environment.MachineName, Environment.ProcessId, process.StartTime.ToUniversalTime(), Guid.NewGuid().ToString("N"), DateTime.UtcNow);
        // Written whole beside the target, then published only if the name is free (AtomicFile: link(2) on Unix, which
        // fails if the target exists, as O_EXCL does): a claim is never seen half-written, even if its writer dies then.
        string temporary = $"{path}.{owner.Token}.tmp";
        try
        {
            File.WriteAllText(temporary, JsonSerializer.Serialize(owner));
            return AtomicFile.TryPublish(temporary, path) ? new ItemClaim(path, owner.Token, lease) : null;
        }
        finally
        {
            File.Delete(temporary); // gone already after a successful publish
        }
    }

    /// <summary>The claim file's owner, or null when it is missing or unreadable.</summary>
    public static Owner? Read(string path)
    {
        try
        {
            return JsonSerializer.Deserialize<Owner>(File.ReadAllText(path));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            return null;
        }
    }

    /// <summary>A process of this host that no longer runs (or whose pid now names another process), or an unrefreshed claim.</summary>
    public static bool IsStale(string path, Owner owner, TimeSpan lease)
    {
        if (string.Equals(owner.Host, Environment.MachineName, StringComparison.OrdinalIgnoreCase) && !IsRunning(owner.Pid, owner.ProcessStart))
            return true;
        return DateTime.UtcNow - SafeWriteTime(path) > lease;
    }

    private static bool IsRunning(int pid, DateTime startedUtc)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            if (process.HasExited) return false;
            return Math.Abs((process.StartTime.ToUniversalTime() - startedUtc).TotalSeconds) < 2; // not a reused pid
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }

    private static DateTime SafeWriteTime(string path)
    {
        try { return File.GetLastWriteTimeUtc(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return DateTime.UtcNow; }
    }

    private void Refresh()
    {
        try
        {
            if (!_disposed && Read(_path)?.Token == _token) File.SetLastWriteTimeUtc(_path, DateTime.UtcNow);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // a missed refresh only shortens the lease; the next one tries again
        }
    }

    /// <summary>Releases the claim (only if the file is still this claim's: a taker may have replaced a stale one).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _heartbeat.Dispose();
        try
        {
            if (Read(_path)?.Token == _token) File.Delete(_path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // left behind: it goes stale and is taken over
        }
    }
}
