using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace DiffusionPrune.Runtime;

/// <summary>
/// Runs the guard's kernel check (<see cref="OpCheck.RunQuick"/> with libtorch's default kernels) in a child process,
/// so the parent learns whether this CPU needs the workaround before its own oneDNN first runs: only then can the
/// parent still cap oneDNN's instruction set, the cheaper workaround that the fault's reporter verified. The child is
/// the program itself started with a hidden argument (<c>dprune __check-kernels</c>, <c>Studio --check-kernels</c>),
/// which calls <see cref="RunAndPrint"/>.
/// </summary>
public static class ChildKernelCheck
{
    private static readonly JsonSerializerOptions Options = new()
    {
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals, // NaN errors are the point of the check
    };

    private sealed record Wire(List<OpCheckResult> Results, int Threads, double Seconds);

    /// <summary>In the child: runs the quick check with the default kernels and prints it as one JSON line.</summary>
    public static int RunAndPrint(TextWriter output)
    {
        var report = OpCheck.RunQuick();
        output.WriteLine(JsonSerializer.Serialize(new Wire([.. report.Results], report.Threads, report.Elapsed.TotalSeconds), Options));
        return 0;
    }

    /// <summary>Parses what <see cref="RunAndPrint"/> printed (the last JSON line), or null.</summary>
    public static OpCheckReport? Parse(string stdout)
    {
        var line = stdout.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.StartsWith('{'));
        if (line is null) return null;
        try
        {
            var wire = JsonSerializer.Deserialize<Wire>(line, Options);
            return wire is { Results.Count: > 0 } ? new OpCheckReport(wire.Results, wire.Threads, TimeSpan.FromSeconds(wire.Seconds)) : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>
    /// In the parent: starts <paramref name="start"/> and returns the child's report, or null when the child could not
    /// run, crashed (a kernel fault can crash as well as compute garbage: then the check is simply done in-process) or
    /// took longer than <paramref name="timeout"/>.
    /// </summary>
    /// <param name="environment">
    /// Set in the child's environment: none checks the defaults; <c>dprune doctor</c> passes a workaround's variable
    /// (oneDNN's ISA cap) to check what the programs on this machine will start with.
    /// </param>
    public static OpCheckReport? Run(ProcessStartInfo start, TimeSpan timeout, IReadOnlyDictionary<string, string>? environment = null)
    {
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        start.Environment.Remove(OneDnnIsaCapWorkaround.Variable); // the child checks the defaults
        start.Environment.Remove("DPRUNE_ONEDNN");
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;
        try
        {
            using var process = Process.Start(start);
            if (process is null) return null;
            var stdout = process.StandardOutput.ReadToEndAsync();
            _ = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(timeout))
            {
                process.Kill(entireProcessTree: true);
                return null;
            }
            return process.ExitCode == 0 ? Parse(stdout.Result) : null;
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException or IOException)
        {
            return null;
        }
    }

    /// <summary>How to start this very program again with <paramref name="argument"/> (through <c>dotnet</c> when it runs as a dll).</summary>
    public static ProcessStartInfo Self(string argument)
    {
        string process = Environment.ProcessPath ?? "dotnet";
        var start = new ProcessStartInfo(process);
        bool viaDotnet = Path.GetFileNameWithoutExtension(process).Equals("dotnet", StringComparison.OrdinalIgnoreCase);
        if (viaDotnet && System.Reflection.Assembly.GetEntryAssembly()?.Location is { Length: > 0 } entry) start.ArgumentList.Add(entry);
        start.ArgumentList.Add(argument);
        return start;
    }
}
