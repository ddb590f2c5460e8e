using System.CommandLine;
using DiffusionPrune.Cli.Commands;

namespace DiffusionPrune.Cli;

/// <summary>The <c>dprune</c> command tree; a thin shell over the core library.</summary>
public static class DprunCli
{
    /// <summary>Shows libtorch's native warnings (e.g. NNPACK's on CPUs it does not support) and internal errors' traces, which are kept off stderr otherwise.</summary>
    public static Option<bool> VerboseOption { get; } = new("--verbose") { Description = "Show libtorch's native warnings and the traces of internal errors.", Recursive = true };

    /// <summary>The memory a job may use; jobs whose estimate from the config exceeds it are refused before anything is allocated.</summary>
    public static Option<string?> MaxMemoryOption { get; } = new("--max-memory")
    {
        Description = "Refuse jobs whose estimated memory (weights + activations, from the config alone) is above this size, e.g. 4G or 512M. Default: the memory available now (or DPRUNE_MAX_MEMORY).",
        Recursive = true,
    };

    public static RootCommand Build() => new("dprune — load, prune, evaluate and export diffusion models (diffusers layout).")
    {
        VerboseOption,
        MaxMemoryOption,
        ForwardCommand.Create(),
        SampleCommand.Create(),
        InfoCommand.Create(),
        TrainCommand.Create(),
        EvalCommand.Create(),
        FeatureNetCommand.Create(),
        PruneCommand.Create(),
        DistillCommand.Create(),
        ExportCommand.Create(),
        CompareCommand.Create(),
        BatchCommand.Create(),
        DoctorCommand.Create(),
        InitCommand.Create(),
        Benchmarks.StepProbe.Create(),
    };

    public static int Run(string[] args)
    {
        var parse = Build().Parse(args);
        if (parse.GetValue(VerboseOption))
        {
            Runtime.LibTorchContext.ShowNativeWarnings = true; // before any model is built
            Commands.CliCommon.Verbose = true;
        }
        if (parse.GetValue(MaxMemoryOption) is { } limit)
        {
            try
            {
                Runtime.MemoryLimit.Override = Runtime.MemoryLimit.Parse(limit);
            }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }
        }
        return parse.Invoke();
    }
}
