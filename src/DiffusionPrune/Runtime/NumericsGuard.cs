using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace DiffusionPrune.Runtime;

/// <summary>A kernel workaround the guard can switch on when the op check fails.</summary>
public interface IKernelWorkaround
{
    /// <summary>What it does, for reports (e.g. "oneDNN disabled").</summary>
    string Name { get; }
    bool Available { get; }
    bool Active { get; }
    void Activate();

    /// <summary>
    /// The environment variables that apply it to a new process, for one started to check it (<c>dprune doctor</c>),
    /// or null where it cannot be applied that way.
    /// </summary>
    IReadOnlyDictionary<string, string>? ChildEnvironment => null;
}

/// <summary>Turns libtorch's oneDNN kernels off for this process: convolutions then take libtorch's im2col + BLAS path.</summary>
/// <remarks>Takes effect at once, so it is the fallback within a process whose check just failed.</remarks>
public sealed class OneDnnOffWorkaround : IKernelWorkaround
{
    public string Name => "oneDNN disabled (convolutions run libtorch's im2col + BLAS path)";
    public bool Available => LibTorchContext.CanSwitchOneDnn;
    public bool Active => Available && !LibTorchContext.OneDnnEnabled;
    public void Activate() => LibTorchContext.OneDnnEnabled = false;
}

/// <summary>
/// Caps oneDNN's instruction set at SSE4.1 (<c>ONEDNN_MAX_CPU_ISA=SSE41</c> in the native environment). oneDNN reads
/// the variable once, when it first runs, so this only works at the very start of a process; the guard applies it
/// there on machines whose check failed before. Cheaper than turning oneDNN off, and the cap the fault's reporter
/// verified on the failing CPU (docs/PLATFORMS.md).
/// </summary>
public sealed class OneDnnIsaCapWorkaround : IKernelWorkaround
{
    public const string Variable = "ONEDNN_MAX_CPU_ISA";
    public const string Value = "SSE41";
    public string Name => $"oneDNN capped at SSE4.1 ({Variable}={Value})";
    /// <summary>On x86, unless the user set the variable to something else (theirs is respected).</summary>
    public bool Available => RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.X86
        && NativeEnvironment.Get(Variable) is null or Value;
    public bool Active => Available && string.Equals(NativeEnvironment.Get(Variable), Value, StringComparison.OrdinalIgnoreCase);
    public void Activate() => NativeEnvironment.Set(Variable, Value);
    public IReadOnlyDictionary<string, string>? ChildEnvironment => new Dictionary<string, string> { [Variable] = Value };
}

/// <summary>What the guard found and did on this machine.</summary>
/// <param name="Fingerprint">Hash of CPU model, vector flags, libtorch and check version: the cache key.</param>
/// <param name="FromCache">The decision came from an earlier check on this machine (no check ran now).</param>
/// <param name="DefaultsPassed">The op check passed with libtorch's default kernels.</param>
/// <param name="WorkaroundActive">A workaround is on in this process.</param>
/// <param name="Healthy">The kernels in use are right (the check passed, with or without a workaround).</param>
/// <param name="Report">The last check that ran now (null when the decision came from the cache).</param>
/// <param name="ActiveWorkaround">The workaround in use, for reports (null when none is).</param>
public sealed record NumericsStatus(string Fingerprint, bool FromCache, bool DefaultsPassed, bool WorkaroundActive, bool Healthy,
    string Detail, OpCheckReport? Report, string? ActiveWorkaround = null);

/// <summary>Thrown when this CPU computes wrong float32 results even with the workaround: a user-facing, one-line error.</summary>
public sealed class NumericsFaultException(string message) : Exception(message);

/// <summary>
/// Detects, rather than guesses, whether this CPU's float32 kernels are right (docs/PLATFORMS.md):
/// <list type="number">
/// <item>At a program's start (<see cref="ApplyAtStartup"/>), on a machine with no cached decision, the default kernels
/// are checked in a child process (<see cref="ChildKernelCheck"/>); where they fail, oneDNN's ISA is capped before it
/// first runs here.</item>
/// <item>When the first model is built (<see cref="Ensure"/>), a start-up cap is verified once; without a cached
/// decision the check (<see cref="OpCheck.RunQuick"/>) runs in-process, and only where it fails oneDNN is turned off and
/// the check repeated.</item>
/// </list>
/// The decision is cached per machine (CPU model, flags, libtorch), so later processes pay only a file read.
/// <c>dprune doctor</c> re-checks from scratch and refreshes the cache.
/// </summary>
public sealed class NumericsGuard
{
    /// <summary>Bump when the check changes, so cached decisions of the old check are not trusted.</summary>
    public const int CheckVersion = 1;

    private const string Passed = "passed", Failed = "failed";

    private readonly string? _cacheDirectory;
    private readonly Func<OpCheckReport> _check;
    private readonly IKernelWorkaround _workaround;
    private readonly IKernelWorkaround? _startupWorkaround;
    private readonly object _lock = new();
    private NumericsStatus? _status;
    private readonly bool _forceWorkaround;
    private bool _startupApplied;

    /// <param name="workaround">Switched on within the process when the check fails (oneDNN off).</param>
    /// <param name="startupWorkaround">Applied by <see cref="ApplyAtStartup"/> on machines that failed before (oneDNN's ISA cap).</param>
    /// <param name="forceWorkaround">Switch <paramref name="workaround"/> on without checking (<c>DPRUNE_ONEDNN=off</c> for the default guard).</param>
    public NumericsGuard(string? cacheDirectory, Func<OpCheckReport> check, IKernelWorkaround workaround, string fingerprint,
        bool forceWorkaround = false, IKernelWorkaround? startupWorkaround = null)
    {
        _forceWorkaround = forceWorkaround;
        _cacheDirectory = cacheDirectory;
        _check = check;
        _workaround = workaround;
        _startupWorkaround = startupWorkaround;
        Fingerprint = fingerprint;
    }

    public string Fingerprint { get; }

    public string? CacheFile => _cacheDirectory is null ? null : Path.Combine(_cacheDirectory, $"numerics-{Fingerprint}.json");

    /// <summary>The process-wide guard: the real op check, oneDNN off and oneDNN's ISA cap as workarounds, the user's cache folder.</summary>
    /// <remarks><c>DPRUNE_ONEDNN=off</c> forces oneDNN off (to measure its cost, or on a CPU whose fault the check misses).</remarks>
    public static NumericsGuard Default { get; } = new(DefaultCacheDirectory(), OpCheck.RunQuick, new OneDnnOffWorkaround(), MachineFingerprint(),
        forceWorkaround: string.Equals(Environment.GetEnvironmentVariable("DPRUNE_ONEDNN"), "off", StringComparison.OrdinalIgnoreCase),
        startupWorkaround: new OneDnnIsaCapWorkaround());

    /// <summary>Runs <see cref="Ensure"/> on the default guard (once per process; later calls return the same status).</summary>
    /// <remarks>Also quiets libtorch's NNPACK probe where NNPACK cannot run (<see cref="LibTorchContext.QuietNnpack"/>).</remarks>
    public static NumericsStatus EnsureDefault()
    {
        LibTorchContext.QuietNnpack();
        return Default.Ensure();
    }

    /// <summary>
    /// For the first line of a program (the CLI, the Studio), before any tensor exists: <see cref="ApplyAtStartup"/> on
    /// the default guard. Reads only the cache file; on a machine without a cached failure it does nothing.
    /// </summary>
    /// <param name="childCheck">
    /// Where this machine has no cached decision yet: how to run the kernel check in a child process (see
    /// <see cref="ChildKernelCheck"/>), so even the first process on a faulty machine gets the start-up workaround.
    /// </param>
    public static bool ApplyDefaultAtStartup(Func<OpCheckReport?>? childCheck = null) => Default.ApplyAtStartup(childCheck);

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

    /// <summary>
    /// Where this machine failed the check before (and the start-up workaround has not failed too), switches the
    /// start-up workaround on: it must run before libtorch's kernels first run, which only the program's entry point can
    /// promise. The next <see cref="Ensure"/> verifies it once. Returns whether it was applied.
    /// </summary>
    public bool ApplyAtStartup(Func<OpCheckReport?>? childCheck = null)
    {
        lock (_lock)
        {
            if (_status is not null || _forceWorkaround || _startupWorkaround is not { Available: true }) return false;
            var cached = ReadCache();
            if (cached is null && childCheck?.Invoke() is { } child)
            {
                // The defaults, checked in a process of their own: this one has not run oneDNN yet, so it can still cap it.
                cached = new CachedDecision(!child.Passed, $"default kernels (checked in a child process): {child.Summary}");
                WriteCache(cached);
            }
            if (cached is null || !cached.NeedsWorkaround || cached.StartupWorkaround == Failed) return false;
            // Already on when inherited from a parent that applied it (the Studio's or the test host's children): then it
            // is this process's start-up workaround as much as if set here, and is verified and reported the same way.
            if (!_startupWorkaround.Active) _startupWorkaround.Activate();
            return _startupApplied = true;
        }
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
                    $"{_workaround.Name}, forced by DPRUNE_ONEDNN=off (not checked)", Report: null, _workaround.Name);
            }
            var cached = ReadCache();
            if (cached is null) return _status = Decide();
            if (!cached.NeedsWorkaround)
                return _status = new NumericsStatus(Fingerprint, FromCache: true, DefaultsPassed: true, WorkaroundActive: false, Healthy: true,
                    cached.Detail, Report: null);
            if (_startupApplied)
            {
                if (cached.StartupWorkaround == Passed)
                    return _status = new NumericsStatus(Fingerprint, FromCache: true, DefaultsPassed: false, WorkaroundActive: true, Healthy: true,
                        cached.Detail, Report: null, _startupWorkaround!.Name);
                return _status = VerifyStartupWorkaround(cached);
            }
            if (_workaround.Available) _workaround.Activate();
            return _status = new NumericsStatus(Fingerprint, FromCache: true, DefaultsPassed: false, WorkaroundActive: _workaround.Available && _workaround.Active,
                Healthy: true, cached.Detail, Report: null, _workaround.Available ? _workaround.Name : null);
        }
    }

    /// <summary>Checks again whatever the cache says (<c>dprune doctor</c>), applies the result and refreshes the cache.</summary>
    public NumericsStatus Recheck()
    {
        lock (_lock) return _status = Decide();
    }

    /// <summary>
    /// For <c>dprune doctor</c> after <see cref="Recheck"/> found the defaults wrong: checks the start-up workaround (oneDNN's
    /// ISA cap) in a child process started with its variable, since this process ran oneDNN uncapped already, and
    /// records the verdict, so the report says what the programs on this machine will start with. Null where there is
    /// nothing to check (the defaults passed, no start-up workaround here) or the child could not run.
    /// </summary>
    /// <param name="childCheck">Runs the kernel check in a child process with the given environment variables set.</param>
    public OpCheckReport? CheckStartupWorkaroundInChild(Func<IReadOnlyDictionary<string, string>, OpCheckReport?> childCheck)
    {
        if (_startupWorkaround is not { Available: true, ChildEnvironment: { } environment } startup) return null;
        lock (_lock)
        {
            if (_status is not { DefaultsPassed: false } || ReadCache() is not { NeedsWorkaround: true } cached) return null;
            var report = childCheck(environment);
            if (report is null) return null;
            WriteCache(cached with
            {
                StartupWorkaround = report.Passed ? Passed : Failed,
                Detail = $"{cached.Detail}; with {startup.Name} (in a child process): {report.Summary}",
            });
            return report;
        }
    }

    /// <summary>The first process with the start-up workaround on this machine checks it once and records the verdict.</summary>
    private NumericsStatus VerifyStartupWorkaround(CachedDecision cached)
    {
        var withCap = _check();
        string name = _startupWorkaround!.Name;
        if (withCap.Passed)
        {
            var detail = $"{cached.Detail}; with {name}: {withCap.Summary}";
            WriteCache(cached with { StartupWorkaround = Passed, Detail = detail });
            return new NumericsStatus(Fingerprint, false, false, true, true, detail, withCap, name);
        }
        WriteCache(cached with { StartupWorkaround = Failed });
        return Fallback($"with {name}: {withCap.Summary}", startupFailed: true);
    }

    private NumericsStatus Decide()
    {
        var first = _check();
        string? inUse = ActiveNames();
        if (first.Passed)
        {
            // Passed as things are now; if a workaround is already on, that pass says nothing about the defaults.
            if (inUse is null) WriteCache(new CachedDecision(false, first.Summary));
            else if (_startupApplied && !_workaround.Active && ReadCache() is { } known)
                WriteCache(known with { StartupWorkaround = Passed });
            return new NumericsStatus(Fingerprint, false, DefaultsPassed: inUse is null, inUse is not null, true,
                inUse is null ? first.Summary : $"{first.Summary} with {inUse}", first, inUse);
        }
        string label = inUse is null ? "default kernels" : $"with {inUse}";
        if (!_workaround.Available || _workaround.Active)
            return new NumericsStatus(Fingerprint, false, false, inUse is not null, false,
                $"{label}: {first.Summary}" + (_workaround.Available ? "" : $"; the workaround ({_workaround.Name}) is not available in this build"),
                first, inUse);
        return Fallback($"{label}: {first.Summary}", startupFailed: _startupWorkaround is { Active: true });
    }

    /// <summary>Turns the in-process workaround on, checks again, and caches a decision that holds.</summary>
    private NumericsStatus Fallback(string whatFailed, bool startupFailed)
    {
        _workaround.Activate();
        var second = _check();
        string detail = $"{whatFailed}; with {_workaround.Name}: {second.Summary}";
        if (second.Passed) WriteCache(new CachedDecision(true, detail, startupFailed ? Failed : null));
        return new NumericsStatus(Fingerprint, false, false, true, second.Passed, detail, second, ActiveNames());
    }

    private string? ActiveNames()
    {
        var names = new List<string>();
        if (_startupWorkaround is { Available: true, Active: true }) names.Add(_startupWorkaround.Name);
        if (_workaround.Available && _workaround.Active) names.Add(_workaround.Name);
        return names.Count == 0 ? null : string.Join(" + ", names);
    }

    /// <param name="NeedsWorkaround">The default kernels failed the check on this machine.</param>
    /// <param name="StartupWorkaround">Whether the start-up workaround passed the check here, failed it, or was not tried (null).</param>
    private sealed record CachedDecision(bool NeedsWorkaround, string Detail, string? StartupWorkaround = null);

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
            AtomicFile.Replace(CacheFile, JsonSerializer.Serialize(decision)); // parallel processes never read half a file
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
