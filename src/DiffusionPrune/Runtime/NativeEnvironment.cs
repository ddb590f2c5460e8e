using System.Runtime.InteropServices;

namespace DiffusionPrune.Runtime;

/// <summary>
/// The C runtime's environment, which native libraries read with <c>getenv</c>. On Linux and macOS .NET keeps its own
/// copy: <see cref="Environment.SetEnvironmentVariable(string, string)"/> never reaches native code, so variables that
/// libtorch or oneDNN read must be set here, before the library first reads them.
/// </summary>
public static unsafe class NativeEnvironment
{
    private static readonly Lazy<IntPtr> Libc = new(() =>
    {
        // libc.so.6 on glibc Linux (libc.so is a linker script there), libSystem on macOS.
        string[] candidates = OperatingSystem.IsMacOS() ? ["/usr/lib/libSystem.B.dylib"] : ["libc.so.6", "libc.so"];
        foreach (var candidate in candidates)
            if (NativeLibrary.TryLoad(candidate, out var handle)) return handle;
        return IntPtr.Zero;
    });

    public static string? Get(string name)
    {
        if (OperatingSystem.IsWindows()) return Environment.GetEnvironmentVariable(name); // one Win32 environment for all
        var getenv = (delegate* unmanaged<byte*, byte*>)Function("getenv");
        fixed (byte* key = Utf8(name))
        {
            byte* value = getenv(key);
            return value is null ? null : Marshal.PtrToStringUTF8((IntPtr)value);
        }
    }

    /// <summary>Sets the variable for native code, and for .NET (child processes and reports see it too).</summary>
    public static void Set(string name, string value)
    {
        Environment.SetEnvironmentVariable(name, value);
        if (OperatingSystem.IsWindows()) return;
        var setenv = (delegate* unmanaged<byte*, byte*, int, int>)Function("setenv");
        fixed (byte* key = Utf8(name))
        fixed (byte* text = Utf8(value))
        {
            if (setenv(key, text, 1) != 0) throw new InvalidOperationException($"setenv({name}) failed.");
        }
    }

    private static IntPtr Function(string symbol) =>
        Libc.Value != IntPtr.Zero && NativeLibrary.TryGetExport(Libc.Value, symbol, out var address)
            ? address
            : throw new PlatformNotSupportedException($"The C runtime's {symbol} was not found.");

    private static byte[] Utf8(string text) => System.Text.Encoding.UTF8.GetBytes(text + '\0');
}
