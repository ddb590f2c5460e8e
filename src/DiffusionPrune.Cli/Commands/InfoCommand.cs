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
            var console = new CliOutput(quiet: false, json: false);
            var rows = new List<(string, string)>
            {
                ("model", DiffusersModelLoader.ResolveModelFolder(path)),
                ("class", loaded.ClassName),
                ("sample", $"{loaded.InChannels} x {cost.SampleSize[0]} x {cost.SampleSize[1]}" + (loaded.LearnedSigma ? " (learned sigma: output has 2x channels)" : "")),
                ("conditional", loaded.NumClasses is int n ? $"{n} classes (+ null class {n})" : "no"),
            };
            if (!loaded.Structure.IsEmpty)
                rows.Add(("pruned", $"{loaded.Structure.ResnetInnerChannels.Count + loaded.Structure.AttentionHeads.Count + loaded.Structure.FeedForwardInner.Count} layers narrowed, {loaded.Structure.RemovedLayers.Count} removed"));
            rows.Add(("parameters", $"{cost.Parameters:N0}"));
            rows.Add(("MACs", $"{cost.Macs:N0} per sample ({cost.Macs / 1e6:F1} M)"));
            console.Pairs(rows);
            console.Table(["block", "parameters", "MACs"], cost.Parts.Select(part => (IReadOnlyList<string>)[part.Name, $"{part.Parameters:N0}", $"{part.Macs:N0}"]));
            return 0;
        }));
        return command;
    }
}
