using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace DiffusionPrune.Runtime;

/// <summary>A kernel workaround the guard can switch on when the op check fails (by default: oneDNN off).</summary>
public interface IKernelWorkaround
{
    /// <summary>What it does, for reports (e.g. "oneDNN disabled").</summary>
    string Name { get; }
    bool Available { get; }
    bool Active { get; }
    void Activate();
}

/// <summary>Turns libtorch's oneDNN kernels off for this process: convolutions then take libtorch's im2col + BLAS path.</summary>
public sealed class OneDnnOffWorkaround : IKernelWorkaround
{
    public string Name => "oneDNN disabled (convolutions run libtorch's im2col + BLAS path)";
    public bool Available => LibTorchContext.CanSwitchOneDnn;
    public bool Active => Available && !LibTorchContext.OneDnnEnabled;
    public void Activate() => LibTorchContext.OneDnnEnabled = false;
}

/// <summary>What the guard found and did on this machine.</summary>
/// <param name="Fingerprint">Hash of CPU model, vector flags, libtorch and check version: the cache key.</param>
/// <param name="FromCache">The decision came from an earlier check on this machine (no check ran now).</param>
/// <param name="DefaultsPassed">The op check passed with libtorch's default kernels.</param>
/// <param name="WorkaroundActive">The workaround is on in this process.</param>
/// <param name="Healthy">The kernels in use are right (the check passed, with or without the workaround).</param>
/// <param name="Report">The last check that ran now (null when the decision came from the cache).</param>
public sealed record NumericsStatus(string Fingerprint, bool FromCache, bool DefaultsPassed, bool WorkaroundActive, bool Healthy,
    string Detail, OpCheckReport? Report);

/// <summary>Thrown when this CPU computes wrong float32 results even with the workaround: a user-facing, one-line error.</summary>
public sealed class NumericsFaultException(string message) : Exception(message);

/// <summary>
/// Detects, rather than guesses, whether this CPU's float32 kernels are right: before the first model is built it runs
/// <see cref="OpCheck.RunQuick"/> (narrow-convolution forward and backward against float64), and only where that fails
/// switches the workaround on and checks again. The decision is cached per machine (CPU model, flags, libtorch), so
/// later processes pay only a file read. <c>dprune doctor</c> re-checks from scratch and refreshes the cache.
/// </summary>
public sealed class NumericsGuard
{
    /// <summary>Bump when the check changes, so cached decisions of the old check are not trusted.</summary>
    public const int CheckVersion = 1;

    private readonly string? _cacheDirectory;
    private readonly Func<OpCheckReport> _check;
    private readonly IKernelWorkaround _workaround;
    private readonly object _lock = new();
    private NumericsStatus? _status;
    private readonly bool _forceWorkaround;

    /// <param name="forceWorkaround">Switch the workaround on without checking (<c>DPRUNE_ONEDNN=off</c> for the default guard).</param>
    public NumericsGuard(string? cacheDirectory, Func<OpCheckReport> check, IKernelWorkaround workaround, string fingerprint, bool forceWorkaround = false)
    {
        _forceWorkaround = forceWorkaround;
        _cacheDirectory = cacheDirectory;
        _check = check;
        _workaround = workaround;
        Fingerprint = fingerprint;
    }

    public string Fingerprint { get; }

    public string? CacheFile => _cacheDirectory is null ? null : Path.Combine(_cacheDirectory, $"numerics-{Fingerprint}.json");

    /// <summary>The process-wide guard: the real op check, oneDNN as the workaround, the user's cache folder.</summary>
    /// <remarks><c>DPRUNE_ONEDNN=off</c> forces the workaround (to measure its cost, or on a CPU whose fault the check misses).</remarks>
    public static NumericsGuard Default { get; } = new(DefaultCacheDirectory(), OpCheck.RunQuick, new OneDnnOffWorkaround(), MachineFingerprint(),
        forceWorkaround: string.Equals(Environment.GetEnvironmentVariable("DPRUNE_ONEDNN"), "off", StringComparison.OrdinalIgnoreCase));

    /// <summary>Runs <see cref="Ensure"/> on the default guard (once per process; later calls return the same status).</summary>
    public static NumericsStatus EnsureDefault() => Default.Ensure();

    /// <summary>
    /// For training, pruning and distillation: makes sure the kernels are right, and throws a one-line
    /// <see cref="NumericsFaultException"/> when they are not even with the workaround.
    /// </summary>
    public static void RequireHealthy()
    {
        var status = EnsureDefault();
        if (!status.Healthy)
            throw new NumericsFaultException($"This CPU computes wrong float32 results ({status.Detail}); training or pruning would " +
                "produce garbage. Run `dprune doctor` for the full report.");
    }

    /// <summary>Decides once per process: from the cache when this machine was checked before, else by checking now.</summary>
    public NumericsStatus Ensure()
    {
        lock (_lock)
        {
            if (_status is not null) return _status;
            if (_forceWorkaround && _workaround.Available)
            {
                _workaround.Activate();
                return _status = new NumericsStatus(Fingerprint, false, DefaultsPassed: false, WorkaroundActive: true, Healthy: true,
                    $"{_workaround.Name}, forced by DPRUNE_ONEDNN=off (not checked)", Report: null);
            }
            var cached = ReadCache();
            if (cached is not null)
            {
                if (cached.NeedsWorkaround && _workaround.Available) _workaround.Activate();
                return _status = new NumericsStatus(Fingerprint, FromCache: true, DefaultsPassed: !cached.NeedsWorkaround,
                    WorkaroundActive: _workaround.Available && _workaround.Active, Healthy: true, cached.Detail, Report: null);
            }
            return _status = Decide();
        }
    }

    /// <summary>Checks again whatever the cache says (<c>dprune doctor</c>), applies the result and refreshes the cache.</summary>
    public NumericsStatus Recheck()
    {
        lock (_lock) return _status = Decide();
    }

    private NumericsStatus Decide()
    {
        var first = _check();
        if (first.Passed)
        {
            // Passed as things are now; if the workaround is already on, that pass says nothing about the defaults.
            bool workaroundOn = _workaround.Available && _workaround.Active;
            if (!workaroundOn) WriteCache(new CachedDecision(false, first.Summary));
            return new NumericsStatus(Fingerprint, false, DefaultsPassed: !workaroundOn, workaroundOn, true,
                workaroundOn ? $"{first.Summary} with {_workaround.Name}" : first.Summary, first);
        }
        if (!_workaround.Available || _workaround.Active)
            return new NumericsStatus(Fingerprint, false, false, _workaround.Available && _workaround.Active, false,
                first.Summary + (_workaround.Available ? $" with {_workaround.Name}" : $"; the workaround ({_workaround.Name}) is not available in this build"), first);
        _workaround.Activate();
        var second = _check();
        string detail = $"default kernels: {first.Summary}; with {_workaround.Name}: {second.Summary}";
        if (second.Passed) WriteCache(new CachedDecision(true, detail));
        return new NumericsStatus(Fingerprint, false, false, true, second.Passed, detail, second);
    }

    private sealed record CachedDecision(bool NeedsWorkaround, string Detail);

    private CachedDecision? ReadCache()
    {
        try
        {
            return CacheFile is not null && File.Exists(CacheFile) ? JsonSerializer.Deserialize<CachedDecision>(File.ReadAllText(CacheFile)) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            return null; // unreadable or corrupt: check again
        }
    }

    private void WriteCache(CachedDecision decision)
    {
        if (CacheFile is null) return;
        try
        {
            Directory.CreateDirectory(_cacheDirectory!);
            string temporary = $"{CacheFile}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
            File.WriteAllText(temporary, JsonSerializer.Serialize(decision));
            File.Move(temporary, CacheFile, overwrite: true); // atomic: parallel processes never read half a file
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // No writable cache: the next process checks again, which is only slower.
        }
    }

    /// <summary><c>DPRUNE_CACHE_DIR</c>, else <c>$XDG_CACHE_HOME/dprune</c>, else <c>~/.cache/dprune</c> (local app data on Windows).</summary>
    public static string? DefaultCacheDirectory()
    {
        string? overridden = Environment.GetEnvironmentVariable("DPRUNE_CACHE_DIR");
        if (!string.IsNullOrWhiteSpace(overridden)) return overridden;
        if (OperatingSystem.IsWindows())
            return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "dprune");
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (!string.IsNullOrWhiteSpace(xdg)) return Path.Combine(xdg, "dprune");
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return string.IsNullOrEmpty(home) ? null : Path.Combine(home, ".cache", "dprune");
    }

    /// <summary>The cache key: CPU model and vector flags, libtorch and TorchSharp versions, the check's version.</summary>
    public static string MachineFingerprint()
    {
        var cpu = CpuInfo.Read();
        string text = string.Join("\n", cpu.Model, string.Join(' ', cpu.Flags), RuntimeInformation.OSArchitecture,
            LibTorchContext.LibTorchVersion, LibTorchContext.TorchSharpVersion, CheckVersion);
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16].ToLowerInvariant();
    }
}

/// <summary>The CPU's model name and flags: /proc/cpuinfo on Linux, else the vector ISAs .NET reports.</summary>
public sealed record CpuInfo(string Model, IReadOnlyList<string> Flags)
{
    /// <summary>The flags that matter for kernel choice (SSE4, AVX, AVX2, FMA, AVX-512*, AMX*, VNNI, BF16).</summary>
    public IEnumerable<string> VectorFlags => Flags.Where(f =>
        f.StartsWith("sse4", StringComparison.Ordinal) || f.StartsWith("avx", StringComparison.Ordinal) || f == "fma" ||
        f.StartsWith("amx", StringComparison.Ordinal) || f.Contains("vnni", StringComparison.Ordinal) || f.Contains("bf16", StringComparison.Ordinal));

    public static CpuInfo Read()
    {
        const string path = "/proc/cpuinfo";
        if (File.Exists(path))
        {
            string model = "unknown";
            string[] flags = [];
            foreach (var line in File.ReadLines(path))
            {
                int colon = line.IndexOf(':');
                if (colon < 0) continue;
                string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
                if (key == "model name" && model == "unknown") model = value;
                else if (key == "flags" && flags.Length == 0) flags = value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (model != "unknown" && flags.Length > 0) break;
            }
            return new CpuInfo(model, flags);
        }
        var isa = new List<string>();
        if (Sse41.IsSupported) isa.Add("sse4_1");
        if (Avx.IsSupported) isa.Add("avx");
        if (Avx2.IsSupported) isa.Add("avx2");
        if (Fma.IsSupported) isa.Add("fma");
        if (Avx512F.IsSupported) isa.Add("avx512f");
        if (Avx512BW.IsSupported) isa.Add("avx512bw");
        if (Avx512Vbmi.IsSupported) isa.Add("avx512vbmi");
        if (AvxVnni.IsSupported) isa.Add("avx_vnni");
        return new CpuInfo($"{RuntimeInformation.ProcessArchitecture} ({Environment.ProcessorCount} logical processors)", isa);
    }
}
