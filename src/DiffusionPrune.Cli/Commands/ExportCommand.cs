using System.CommandLine;
using DiffusionPrune.Export;
using DiffusionPrune.Pipeline;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune export --model DIR --format safetensors,onnx --output DIR</c>: a deployable bundle (see <see cref="ModelExporter"/>).</summary>
public static class ExportCommand
{
    public static Command Create()
    {
        var model = CliCommon.ModelOption();
        var format = new Option<string>("--format")
        {
            Description = "Comma list of safetensors (diffusers layout) and onnx (model.onnx, opset 17).",
            DefaultValueFactory = _ => "safetensors,onnx",
        };
        var output = new Option<string>("--output") { Description = "Folder for the bundle (written whole, then put in place; an earlier bundle there is replaced, any other non-empty folder is refused).", Required = true };
        var command = new Command("export", "Export a model as a bundle: diffusers safetensors and/or ONNX, scheduler config and a model card.")
        {
            model, format, output,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var request = new ExportRequest
            {
                ModelPath = parse.GetValue(model)!,
                OutputPath = parse.GetValue(output)!,
                Formats = ModelExporter.ParseFormats(parse.GetValue(format)),
            };
            using var pipeline = new DiffusionPipeline(TorchSharp.torch.CPU);
            var result = CliCommon.Await(pipeline.ExportAsync(request, new SynchronousProgress<StageProgress>(p =>
            {
                if (p.Fraction is null || p.Stage == PipelineStage.Load) Console.Error.WriteLine(p.Message);
            }), CliCommon.Interrupt));
            Console.WriteLine($"{result.ClassName}: {result.Parameters:N0} parameters, {result.Macs:N0} MACs per sample");
            foreach (var file in result.Files)
                Console.WriteLine($"wrote {Path.Combine(result.OutputPath, file)}");
            return 0;
        }));
        return command;
    }
}
