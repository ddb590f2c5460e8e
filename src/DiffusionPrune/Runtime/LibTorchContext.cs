using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;

namespace DiffusionPrune.Runtime;

/// <summary>
/// Switches of libtorch's global context (<c>at::globalContext()</c>) that TorchSharp does not expose, reached through
/// libtorch_cpu's exported C++ symbols: whether oneDNN (MKL-DNN) kernels may run, and libtorch's build summary.
/// Every entry is optional: where a symbol cannot be found (another platform, another libtorch) the property says
/// so instead of failing.
/// </summary>
public static class LibTorchContext
{
    private delegate IntPtr GlobalContextFn();
    private delegate void SetBoolFn(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool value);
    [return: MarshalAs(UnmanagedType.U1)]
    private delegate bool GetBoolFn(IntPtr context);
    private delegate IntPtr StringReturningFn(IntPtr returnSlot);

    private static readonly Lazy<IntPtr> Library = new(LoadLibTorchCpu);

    // Itanium (Linux, macOS) and MSVC (Windows) manglings of the same functions.
    private static readonly string[] GlobalContextNames = ["_ZN2at13globalContextEv", "?globalContext@at@@YAAEAVContext@1@XZ"];
    private static readonly string[] SetMkldnnNames = ["_ZN2at7Context20setUserEnabledMkldnnEb", "?setUserEnabledMkldnn@Context@at@@QEAAX_N@Z"];
    private static readonly string[] GetMkldnnNames = ["_ZNK2at7Context17userEnabledMkldnnEv", "?userEnabledMkldnn@Context@at@@QEBA_NXZ"];

    private static readonly string[] SetNnpackNames = ["_ZN2at7Context20setUserEnabledNNPACKEb", "?setUserEnabledNNPACK@Context@at@@QEAAX_N@Z"];
    private static readonly string[] GetNnpackNames = ["_ZNK2at7Context17userEnabledNNPACKEv", "?userEnabledNNPACK@Context@at@@QEBA_NXZ"];
    private static readonly string[] NnpackAvailableNames = ["_ZN2at4_ops17_nnpack_available4callEv", "?call@_nnpack_available@_ops@at@@SA_NXZ"];
    [return: MarshalAs(UnmanagedType.U1)]
    private delegate bool StaticBoolFn();

    /// <summary>Show libtorch's native warnings instead of silencing the known-noisy ones (<c>dprune --verbose</c>).</summary>
    public static bool ShowNativeWarnings { get; set; }

    private static readonly object NnpackLock = new();
    private static bool? _nnpackAvailable;

    /// <summary>
    /// Whether NNPACK works on this CPU, probed once with native stderr silenced. Where it does not, libtorch would
    /// print "Could not initialize NNPACK! Reason: Unsupported hardware." at convolutions; this switches NNPACK off so
    /// it never tries (unless <see cref="ShowNativeWarnings"/>, which leaves libtorch as it is). Null where the symbols
    /// are missing.
    /// </summary>
    public static bool? QuietNnpack()
    {
        lock (NnpackLock)
        {
            if (_nnpackAvailable is not null || ShowNativeWarnings) return _nnpackAvailable;
            var available = Export<StaticBoolFn>(NnpackAvailableNames);
            var set = Export<SetBoolFn>(SetNnpackNames);
            if (available is null || set is null) return null;
            return _nnpackAvailable = QuietNnpack(() => NativeStderr.Silenced(() => available()), enabled => set(Context(), enabled));
        }
    }

    /// <summary>The decision alone: probe once; where NNPACK cannot run, switch it off. Returns what the probe said.</summary>
    public static bool QuietNnpack(Func<bool> probe, Action<bool> setEnabled)
    {
        bool available = probe();
        if (!available) setEnabled(false);
        return available;
    }

    /// <summary>Whether libtorch may use NNPACK now (null where the symbol is missing).</summary>
    public static bool? NnpackEnabled => Export<GetBoolFn>(GetNnpackNames) is { } get ? get(Context()) : null;

    /// <summary>Whether oneDNN can be switched here (the symbols were found).</summary>
    public static bool CanSwitchOneDnn => Export<GlobalContextFn>(GlobalContextNames) is not null
        && Export<SetBoolFn>(SetMkldnnNames) is not null && Export<GetBoolFn>(GetMkldnnNames) is not null;

    /// <summary>
    /// Whether libtorch may use oneDNN kernels (convolutions, and whatever else it routes there). With it off,
    /// float32 convolutions run libtorch's own im2col + BLAS path, the same one float64 always takes.
    /// </summary>
    public static bool OneDnnEnabled
    {
        get
        {
            var get = Export<GetBoolFn>(GetMkldnnNames) ?? throw new PlatformNotSupportedException("libtorch's userEnabledMkldnn was not found in this build.");
            return get(Context());
        }
        set
        {
            var set = Export<SetBoolFn>(SetMkldnnNames) ?? throw new PlatformNotSupportedException("libtorch's setUserEnabledMkldnn was not found in this build.");
            set(Context(), value);
        }
    }

    /// <summary>libtorch's version as TorchSharp reports it.</summary>
    public static string LibTorchVersion => torch.__version__;

    /// <summary>TorchSharp's assembly version.</summary>
    public static string TorchSharpVersion =>
        typeof(torch).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion?.Split('+')[0]
        ?? typeof(torch).Assembly.GetName().Version?.ToString() ?? "unknown";

    /// <summary>
    /// <c>at::show_config()</c>: libtorch's build summary (compiler, MKL and oneDNN versions, CPU capability), or null
    /// where it cannot be read. Only read on x86-64 Linux, where the std::string it returns has a known layout.
    /// </summary>
    public static string? BuildConfig() => ReadStdString("_ZN2at11show_configB5cxx11Ev");

    /// <summary><c>at::get_cpu_capability()</c>: the vector ISA ATen's own kernels dispatch to (e.g. AVX512), or null.</summary>
    public static string? AtenCpuCapability() => ReadStdString("_ZN2at18get_cpu_capabilityB5cxx11Ev");

    private static string? ReadStdString(string symbol)
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return null;
        var fn = Export<StringReturningFn>([symbol]);
        if (fn is null) return null;
        // The x86-64 System V ABI returns a std::string through a hidden pointer to caller memory; libstdc++'s
        // std::string is { char* data; size_t size; char local[16] }. The heap copy is left to the process (read once).
        IntPtr slot = Marshal.AllocHGlobal(64);
        try
        {
            fn(slot);
            IntPtr data = Marshal.ReadIntPtr(slot);
            long size = Marshal.ReadInt64(slot, 8);
            if (data == IntPtr.Zero || size < 0 || size > 1 << 20) return null;
            return Marshal.PtrToStringUTF8(data, (int)size);
        }
        finally
        {
            Marshal.FreeHGlobal(slot);
        }
    }

    private static IntPtr Context()
    {
        var global = Export<GlobalContextFn>(GlobalContextNames) ?? throw new PlatformNotSupportedException("libtorch's globalContext was not found in this build.");
        return global();
    }

    private static T? Export<T>(string[] names) where T : Delegate
    {
        if (Library.Value == IntPtr.Zero) return null;
        foreach (var name in names)
            if (NativeLibrary.TryGetExport(Library.Value, name, out var address))
                return Marshal.GetDelegateForFunctionPointer<T>(address);
        return null;
    }

    private static IntPtr LoadLibTorchCpu()
    {
        // TorchSharp loads libtorch on first use; make sure it has, then open the same library (already mapped).
        torch.InitializeDeviceType(DeviceType.CPU);
        string[] files = OperatingSystem.IsWindows() ? ["torch_cpu.dll"] : OperatingSystem.IsMacOS() ? ["libtorch_cpu.dylib"] : ["libtorch_cpu.so"];
        foreach (var file in files)
        {
            if (NativeLibrary.TryLoad(Path.Combine(AppContext.BaseDirectory, file), out var handle)) return handle;
            if (NativeLibrary.TryLoad(file, out handle)) return handle;
        }
        return IntPtr.Zero;
    }
}
