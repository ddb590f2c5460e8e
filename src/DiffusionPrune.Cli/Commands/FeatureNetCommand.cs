using System.CommandLine;
using System.Text.Json.Nodes;
using DiffusionPrune.Data;
using DiffusionPrune.Metrics;
using static TorchSharp.torch;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune featurenet --output DIR</c>: train the FID feature network and cache the real test statistics.</summary>
public static class FeatureNetCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--output") { Description = "Folder for the feature network (samples/models/featurenet).", Required = true };
        var epochs = new Option<int>("--epochs") { DefaultValueFactory = _ => 8 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 0 };
        var command = new Command("featurenet", "Train the MNIST classifier whose features drive FID-proxy, KID and precision/recall.") { output, epochs, seed };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var data = MnistDataset.Load();
            var (net, result) = FeatureNetTrainer.Train(data, parse.GetValue(epochs), seed: parse.GetValue(seed), log: Console.Error.WriteLine);
            string folder = parse.GetValue(output)!;
            net.Save(folder, new JsonObject
            {
                ["test_accuracy"] = result.TestAccuracy,
                ["epochs"] = result.Epochs,
                ["seed"] = parse.GetValue(seed),
                ["train_seconds"] = Math.Round(result.TrainSeconds, 1),
                ["command"] = $"dprune featurenet --output {folder} --epochs {parse.GetValue(epochs)} --seed {parse.GetValue(seed)}",
                ["data"] = "samples/data/mnist.bin.gz train split (8,000 images); accuracy on the 2,000-image test split",
            });
            using (var scope = NewDisposeScope())
            {
                var stats = GaussianStats.FromFeatures(net.FeaturesOf(data.Test.All()).to_type(ScalarType.Float64));
                stats.Save(Path.Combine(folder, FeatureNet.ReferenceStatsName), new Dictionary<string, string> { ["source"] = "MNIST test split, 2,000 images" });
            }
            Console.WriteLine($"test accuracy {result.TestAccuracy:P2} after {result.Epochs} epochs ({result.TrainSeconds:F0} s); saved to {folder}");
            return result.TestAccuracy >= 0.98 ? 0 : 3;
        }));
        return command;
    }
}
