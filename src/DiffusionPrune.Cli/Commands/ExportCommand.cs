using System.CommandLine;
using DiffusionPrune.Export;

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
        var output = new Option<string>("--output") { Description = "Folder for the bundle (created if missing; files of the same names are replaced).", Required = true };
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
            var result = ModelExporter.Export(request, Console.Error.WriteLine);
            Console.WriteLine($"{result.ClassName}: {result.Parameters:N0} parameters, {result.Macs:N0} MACs per sample");
            foreach (var file in result.Files)
                Console.WriteLine($"wrote {Path.Combine(result.OutputPath, file)}");
            return 0;
        }));
        return command;
    }
}
