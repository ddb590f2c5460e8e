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

    internal static IntPtr Function(string symbol) =>
        Libc.Value != IntPtr.Zero && NativeLibrary.TryGetExport(Libc.Value, symbol, out var address)
            ? address
            : throw new PlatformNotSupportedException($"The C runtime's {symbol} was not found.");

    internal static byte[] Utf8(string text) => System.Text.Encoding.UTF8.GetBytes(text + '\0');
}

/// <summary>The process's native stderr (file descriptor 2), where libtorch prints its warnings.</summary>
public static unsafe class NativeStderr
{
    /// <summary>
    /// Runs <paramref name="body"/> with native stderr sent to /dev/null (Linux and macOS; elsewhere it just runs), so a
    /// probe that libtorch answers with a warning stays quiet. Anything else writing to stderr meanwhile is lost too, so
    /// keep the body to one short native call.
    /// </summary>
    public static T Silenced<T>(Func<T> body)
    {
        if (OperatingSystem.IsWindows()) return body();
        var dup = (delegate* unmanaged<int, int>)NativeEnvironment.Function("dup");
        var dup2 = (delegate* unmanaged<int, int, int>)NativeEnvironment.Function("dup2");
        var close = (delegate* unmanaged<int, int>)NativeEnvironment.Function("close");
        var open = (delegate* unmanaged<byte*, int, int>)NativeEnvironment.Function("open");
        Console.Error.Flush();
        int saved = dup(2);
        if (saved < 0) return body();
        int devNull;
        fixed (byte* path = "/dev/null\0"u8) devNull = open(path, 1 /* O_WRONLY */);
        if (devNull < 0) { close(saved); return body(); }
        dup2(devNull, 2);
        close(devNull);
        try
        {
            return body();
        }
        finally
        {
            dup2(saved, 2);
            close(saved);
        }
    }
}
