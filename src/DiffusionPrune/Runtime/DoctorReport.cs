using Microsoft.ML.OnnxRuntime;
using TorchSharp;

namespace DiffusionPrune.Runtime;

/// <summary>
/// What <c>dprune doctor</c> and the Studio's system page show: the machine, the native libraries, the kernels in use,
/// and every op our models use checked against float64. Running it re-checks this CPU and refreshes the guard's cache.
/// </summary>
public sealed record DoctorReport(
    CpuInfo Cpu,
    string LibTorchVersion,
    string TorchSharpVersion,
    string? OneDnnVersion,
    string? AtenCpuCapability,
    string OnnxRuntimeVersion,
    int Threads,
    bool? OneDnnEnabled,
    NumericsStatus Guard,
    OpCheckReport FullCheck,
    string? OneDnnMaxIsa = null,
    bool? NnpackAvailable = null,
    OpCheckReport? StartupCheck = null)
{
    /// <summary>The guard's decision holds and every op passed with the kernels now in use.</summary>
    public bool Passed => Guard.Healthy && FullCheck.Passed;

    /// <param name="childCheck">
    /// Runs the kernel check in a child process with the given environment (<see cref="ChildKernelCheck"/>): where the
    /// defaults fail, the report then also says whether the start-up workaround, oneDNN's ISA cap, is right here.
    /// </param>
    public static DoctorReport Run(Func<IReadOnlyDictionary<string, string>, OpCheckReport?>? childCheck = null)
    {
        bool? nnpack = LibTorchContext.QuietNnpack(); // before the first convolution, or libtorch warns at each one
        var guard = NumericsGuard.Default.Recheck();
        var startup = childCheck is null ? null : NumericsGuard.Default.CheckStartupWorkaroundInChild(childCheck);
        var full = OpCheck.RunFull();
        string? config = LibTorchContext.BuildConfig();
        return new DoctorReport(CpuInfo.Read(), LibTorchContext.LibTorchVersion, LibTorchContext.TorchSharpVersion,
            OneDnnVersionFrom(config), LibTorchContext.AtenCpuCapability(), ReadOnnxRuntimeVersion(), torch.get_num_threads(),
            LibTorchContext.CanSwitchOneDnn ? LibTorchContext.OneDnnEnabled : null, guard, full,
            NativeEnvironment.Get(OneDnnIsaCapWorkaround.Variable), nnpack, startup);
    }

    /// <summary>The machine and kernel facts at the head of the report, as (label, value): the CLI and the Studio show the same.</summary>
    public IReadOnlyList<(string Label, string Value)> Facts() =>
    [
        ("cpu", Cpu.Model),
        ("vector flags", string.Join(' ', Cpu.VectorFlags)),
        ("libtorch", $"{LibTorchVersion} (TorchSharp {TorchSharpVersion}); oneDNN {OneDnnVersion ?? "version unknown"}"),
        ("ATen ISA", AtenCpuCapability ?? "unknown"),
        ("onnxruntime", OnnxRuntimeVersion),
        ("threads", Threads.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        ("oneDNN", OneDnnEnabled is null ? "cannot be switched in this build" : OneDnnEnabled.Value ? "enabled" : "disabled"),
        ("NNPACK", NnpackAvailable switch
        {
            true => "available",
            false => "not supported on this CPU (switched off, which keeps libtorch from warning at every convolution)",
            null => "not probed (--verbose, or not in this build)",
        }),
        ("oneDNN ISA", OneDnnMaxIsa is null ? "the highest this CPU has (no cap)" : $"capped at {OneDnnMaxIsa} ({OneDnnIsaCapWorkaround.Variable})"),
        ("workaround", (Guard.WorkaroundActive ? $"active: {Guard.ActiveWorkaround ?? "yes"}" : "not active") + " — " +
            (Guard.DefaultsPassed ? "default kernels passed the check" : "default kernels failed the check on this machine")),
        ("runs use", RunsUse()),
        ("guard", Guard.Detail),
    ];

    /// <summary>The kernels that training, pruning and sampling start with on this machine (they may differ from this process's).</summary>
    private string RunsUse()
    {
        if (Guard.DefaultsPassed) return "libtorch's default kernels";
        var cap = new OneDnnIsaCapWorkaround();
        if (StartupCheck is null) return $"{cap.Name} where it passes its first check, else {new OneDnnOffWorkaround().Name}";
        return StartupCheck.Passed
            ? $"{cap.Name}, checked in a child process: {StartupCheck.Summary}"
            : $"{new OneDnnOffWorkaround().Name}: {cap.Name} failed in a child process ({StartupCheck.Summary})";
    }

    /// <summary>The last line: passed, with the op count and tolerance, or what failed.</summary>
    public string Verdict => Passed
        ? $"passed: {FullCheck.Results.Count} ops within {OpCheck.Tolerance:E0} of float64 ({FullCheck.Elapsed.TotalSeconds:F1} s)"
        : $"FAILED: {(Guard.Healthy ? "" : $"guard: {Guard.Detail}; ")}{FullCheck.Summary}";

    /// <summary>The report as text lines, the same in the CLI and the Studio.</summary>
    public IEnumerable<string> Lines()
    {
        foreach (var (label, value) in Facts())
            yield return $"{label + ":",-14}{value}";
        yield return "";
        yield return $"{"op",-22} {"shape",-34} {"forward",9} {"backward",9}";
        foreach (var r in FullCheck.Results)
            yield return $"{r.Op,-22} {r.Shape,-34} {r.ForwardError,9:E1} {r.BackwardError,9:E1}{(r.Passed ? "" : "  FAIL")}";
        yield return "";
        yield return Verdict;
    }

    private static string? OneDnnVersionFrom(string? config)
    {
        if (config is null) return null;
        int at = config.IndexOf("MKL-DNN v", StringComparison.Ordinal);
        if (at < 0) at = config.IndexOf("oneDNN v", StringComparison.Ordinal);
        if (at < 0) return null;
        int start = config.IndexOf('v', at) + 1, end = start;
        while (end < config.Length && (char.IsDigit(config[end]) || config[end] == '.')) end++;
        return config[start..end];
    }

    private static string ReadOnnxRuntimeVersion()
    {
        try { return OrtEnv.Instance().GetVersionString(); }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or OnnxRuntimeException) { return "not loadable"; }
    }
}
