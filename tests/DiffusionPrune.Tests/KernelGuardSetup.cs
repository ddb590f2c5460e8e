using System.Runtime.CompilerServices;
using DiffusionPrune.Runtime;

namespace DiffusionPrune.Tests;

/// <summary>
/// The test host starts as dprune and the Studio do: before any tensor exists, a machine whose kernels failed the
/// check (cached, or checked now by dprune in a child process) gets oneDNN's ISA cap while it can still take effect.
/// On a healthy machine this is one file read after the first run.
/// </summary>
internal static class KernelGuardSetup
{
#pragma warning disable CA2255 // a test assembly is this module's only user: it must run before the first test touches libtorch
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void ApplyStartupWorkaround()
    {
        bool built = File.Exists(Path.Combine(AppContext.BaseDirectory, "dprune.dll"));
        NumericsGuard.ApplyDefaultAtStartup(() =>
            built ? ChildKernelCheck.Run(Cli.CliTests.DprunStartInfo("__check-kernels"), TimeSpan.FromMinutes(2)) : null);
    }
}
