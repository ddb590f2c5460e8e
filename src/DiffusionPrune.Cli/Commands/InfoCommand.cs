using System.CommandLine;
using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using DiffusionPrune.Runtime;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune info --model DIR</c>: config summary, parameters and MACs per block.</summary>
public static class InfoCommand
{
    public static Command Create()
    {
        var model = CliCommon.ModelOption();
        var batch = new Option<int>("--batch") { Description = "Batch for the memory estimates.", DefaultValueFactory = _ => 16 };
        var command = new Command("info", "Show a model's resource estimate (from its config alone), configuration, parameters and MACs per block.") { model, batch };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            string path = parse.GetValue(model)!;
            var estimate = ModelFamilies.EstimateFolder(path); // from the config alone: shown even when the model does not fit
            var console = new CliOutput(quiet: false, json: false);
            var estimateRows = EstimateRows(estimate, batch: parse.GetValue(batch));
            if (Pipeline.StableDiffusion.StableDiffusionPipeline.IsStableDiffusionFolder(path))
            {
                // the rows above are the pipeline's U-Net's; these add its text encoder and VAE
                var (limit, _) = MemoryLimit.Current();
                foreach (int images in new[] { 1, 4 })
                {
                    var need = Pipeline.StableDiffusion.PipelineResources.Sampling(path, images, guided: true);
                    estimateRows.Add(($"pipeline, {images} image{(images == 1 ? "" : "s")} guided", need.Describe() + (need.TotalBytes <= limit ? "" : "  ** over the limit **")));
                }
            }
            console.Pairs(estimateRows);
            using var loaded = ModelFamilies.Load(path);
            var cost = ModelCost.Measure(loaded);
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

    /// <summary>The estimate's lines: what loading, sampling, training and EcoDiff would need, beside the memory limit.</summary>
    private static List<(string, string)> EstimateRows(ResourceEstimate e, int batch)
    {
        if (batch < 1) throw new ArgumentException("--batch must be at least 1.");
        var (limit, source) = MemoryLimit.Current();
        string Fits(ResourceNeed need) => need.Describe() + (need.TotalBytes <= limit ? "" : "  ** over the limit **");
        return
        [
            ("estimate", $"from the config alone, before anything is allocated (float32; limit {MemoryLimit.Format(limit)}, {source})"),
            ("parameters", $"{e.Parameters:N0} ({MemoryLimit.Format(e.ParameterBytes)})"),
            ("MACs", $"{e.Macs:N0} per sample at {e.SampleSize[0]} x {e.SampleSize[1]}"),
            ("load + 1 sample", Fits(e.Inference(1))),
            ($"sampling, batch {batch}", Fits(e.Inference(batch))),
            ($"training, batch {batch}", Fits(e.Training(batch))),
            ($"EcoDiff, {batch} noises, 10 steps", Fits(PruneRunner.MemoryNeed(e, new PruneRequest { ModelPath = "", Method = "ecodiff", TargetParams = 0.2, Calibration = batch }))),
        ];
    }
}
