using System.CommandLine;
using DiffusionPrune.Runtime;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune doctor</c>: this machine's CPU, native libraries and kernels, every op checked against float64.</summary>
public static class DoctorCommand
{
    public static Command Create()
    {
        var command = new Command("doctor",
            "Check that this CPU computes our models' ops right: every op forward and backward in float32 against float64. " +
            "Re-checks the numerics guard and refreshes its cache. Exits 1 when an op is wrong.");
        command.SetAction(_ => CliCommon.Run(() =>
        {
            var report = DoctorReport.Run(environment =>
                ChildKernelCheck.Run(ChildKernelCheck.Self("__check-kernels"), TimeSpan.FromMinutes(2), environment));
            foreach (var line in report.Lines()) Console.WriteLine(line);
            return report.Passed ? 0 : 1;
        }));
        return command;
    }
}
