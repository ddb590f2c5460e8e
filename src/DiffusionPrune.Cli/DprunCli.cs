using System.CommandLine;
using DiffusionPrune.Cli.Commands;

namespace DiffusionPrune.Cli;

/// <summary>The <c>dprune</c> command tree; a thin shell over the core library.</summary>
public static class DprunCli
{
    public static RootCommand Build() => new("dprune — load, prune, evaluate and export diffusion models (diffusers layout).")
    {
        ForwardCommand.Create(),
        SampleCommand.Create(),
        InfoCommand.Create(),
        TrainCommand.Create(),
        EvalCommand.Create(),
        FeatureNetCommand.Create(),
        PruneCommand.Create(),
        ExportCommand.Create(),
        BatchCommand.Create(),
        DoctorCommand.Create(),
    };

    public static int Run(string[] args) => Build().Parse(args).Invoke();
}
