using System.CommandLine;
using DiffusionPrune.Cli.Commands;

namespace DiffusionPrune.Cli;

/// <summary>The <c>dprune</c> command tree; a thin shell over the core library.</summary>
public static class DprunCli
{
    /// <summary>Shows libtorch's native warnings (e.g. NNPACK's on CPUs it does not support) and internal errors' traces, which are kept off stderr otherwise.</summary>
    public static Option<bool> VerboseOption { get; } = new("--verbose") { Description = "Show libtorch's native warnings and the traces of internal errors.", Recursive = true };

    public static RootCommand Build() => new("dprune — load, prune, evaluate and export diffusion models (diffusers layout).")
    {
        VerboseOption,
        ForwardCommand.Create(),
        SampleCommand.Create(),
        InfoCommand.Create(),
        TrainCommand.Create(),
        EvalCommand.Create(),
        FeatureNetCommand.Create(),
        PruneCommand.Create(),
        DistillCommand.Create(),
        ExportCommand.Create(),
        BatchCommand.Create(),
        DoctorCommand.Create(),
    };

    public static int Run(string[] args)
    {
        var parse = Build().Parse(args);
        if (parse.GetValue(VerboseOption))
        {
            Runtime.LibTorchContext.ShowNativeWarnings = true; // before any model is built
            Commands.CliCommon.Verbose = true;
        }
        return parse.Invoke();
    }
}
