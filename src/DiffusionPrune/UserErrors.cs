using DiffusionPrune.Data;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.OnnxGraphs;
using DiffusionPrune.Pruning;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;

namespace DiffusionPrune;

/// <summary>
/// Which exceptions are the user's to fix (a bad path, a corrupt or crafted file, a wrong argument, an impossible
/// target) rather than our bug. Every face reports these as one line (the CLI with exit code 2); the fuzz harness
/// accepts only these from a malformed input. One definition for all of them.
/// </summary>
public static class UserErrors
{
    public static bool Is(Exception e) => e is ModelFormatException or SafetensorsFormatException or SchedulerConfigException
        or MnistFormatException or PruningPlanException or FileNotFoundException or DirectoryNotFoundException or ArgumentException
        or KeyNotFoundException or NotSupportedException or InvalidDataException or OnnxExportException
        or NumericsFaultException or NonFiniteValueException or ResourceLimitException;
}
