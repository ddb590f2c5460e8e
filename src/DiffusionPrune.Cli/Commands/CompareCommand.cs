using System.CommandLine;
using System.Globalization;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Pipeline;

namespace DiffusionPrune.Cli.Commands;

/// <summary>
/// <c>dprune compare --models ORIGINAL PRUNED... --output DIR</c>: 2 to 6 models side by side from the same noise
/// (see <see cref="ModelComparison"/>): comparison.md, .json and .png, pareto.png, kept-layers.png.
/// </summary>
public static class CompareCommand
{
    public static Command Create()
    {
        var models = new Option<string[]>("--models")
        {
            Description = "2 to 6 model folders; the first is the reference (the original).", Required = true, AllowMultipleArgumentsPerToken = true,
        };
        var names = new Option<string[]>("--names") { Description = "Names to show, in the order of --models (default: the folders' names).", AllowMultipleArgumentsPerToken = true };
        var samples = new Option<int>("--samples") { Description = "Images per model for FID-proxy, KID, precision/recall and SSIM.", DefaultValueFactory = _ => 64 };
        var steps = new Option<int>("--steps") { Description = "DDIM steps per image.", DefaultValueFactory = _ => 10 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 0 };
        var grid = new Option<int>("--grid") { Description = "Images in each side-by-side grid.", DefaultValueFactory = _ => 16 };
        var latencyBatch = new Option<int>("--latency-batch") { Description = "Batch latency is timed at in TorchSharp and ONNX Runtime; 0 skips latency.", DefaultValueFactory = _ => 1 };
        var data = new Option<string?>("--data") { Description = "A folder of real images to measure against (default: MNIST)." };
        var output = new Option<string>("--output") { Description = "Folder for the comparison.", Required = true };
        var runtime = new Option<string>("--runtime") { Description = "What samples the grids and figures: torch (TorchSharp) | onnx (each model's bundle, exported into the comparison, in ONNX Runtime).", DefaultValueFactory = _ => "torch" };
        var provider = CliCommon.ProviderOption();
        var command = new Command("compare", "Compare 2 to 6 models from the same noise: grids and differences, quality, cost, latency, kept layers, Pareto.")
        {
            models, names, samples, steps, seed, grid, latencyBatch, data, output, runtime, provider,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var request = new CompareRequest
            {
                ModelPaths = parse.GetValue(models)!,
                Names = parse.GetValue(names),
                OutputPath = parse.GetValue(output)!,
                Samples = parse.GetValue(samples),
                Steps = parse.GetValue(steps),
                Seed = parse.GetValue(seed),
                GridImages = parse.GetValue(grid),
                LatencyBatch = parse.GetValue(latencyBatch) is int b and > 0 ? b : null,
                Data = parse.GetValue(data),
                Runtime = parse.GetValue(runtime)!,
                Provider = parse.GetValue(provider)!,
            };
            using var pipeline = new DiffusionPipeline(TorchSharp.torch.CPU);
            var report = CliCommon.Await(pipeline.CompareAsync(request, new SynchronousProgress<StageProgress>(p =>
            {
                if (p.Fraction is double f) Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{f,4:P0}] {p.Message}"));
            }), CliCommon.Interrupt));
            Console.WriteLine(report.Markdown());
            Console.WriteLine($"wrote {Path.Combine(Path.GetFullPath(request.OutputPath), ComparisonReport.MarkdownName)}");
            return 0;
        }));
        return command;
    }
}
