using System.CommandLine;
using DiffusionPrune.Cli.Commands;

var root = new RootCommand("dprune — load, prune, evaluate and export diffusion models (diffusers layout).")
{
    ForwardCommand.Create(),
    InfoCommand.Create(),
    SampleCommand.Create(),
    TrainCommand.Create(),
};
return root.Parse(args).Invoke();
