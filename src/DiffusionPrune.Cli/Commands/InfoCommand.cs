using System.CommandLine;
using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Models;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune info --model DIR</c>: config summary, parameters and MACs per block.</summary>
public static class InfoCommand
{
    public static Command Create()
    {
        var model = CliCommon.ModelOption();
        var command = new Command("info", "Show a model's configuration, parameters and MACs per block.") { model };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            string path = parse.GetValue(model)!;
            using var loaded = ModelFamilies.Load(path);
            var cost = ModelCost.Measure(loaded);
            Console.WriteLine($"model:       {DiffusersModelLoader.ResolveModelFolder(path)}");
            Console.WriteLine($"class:       {loaded.ClassName}");
            Console.WriteLine($"sample:      {loaded.InChannels} x {cost.SampleSize[0]} x {cost.SampleSize[1]}" +
                (loaded.LearnedSigma ? " (learned sigma: output has 2x channels)" : ""));
            Console.WriteLine($"conditional: {(loaded.NumClasses is int n ? $"{n} classes (+ null class {n})" : "no")}");
            if (!loaded.Structure.IsEmpty)
                Console.WriteLine($"pruned:      {loaded.Structure.ResnetInnerChannels.Count + loaded.Structure.AttentionHeads.Count + loaded.Structure.FeedForwardInner.Count} layers narrowed, {loaded.Structure.RemovedLayers.Count} removed");
            Console.WriteLine($"parameters:  {cost.Parameters:N0}");
            Console.WriteLine($"MACs:        {cost.Macs:N0} per sample ({cost.Macs / 1e6:F1} M)");
            Console.WriteLine();
            Console.WriteLine($"{"block",-24} {"parameters",12} {"MACs",16}");
            foreach (var part in cost.Parts)
                Console.WriteLine($"{part.Name,-24} {part.Parameters,12:N0} {part.Macs,16:N0}");
            return 0;
        }));
        return command;
    }
}
