using System.CommandLine;
using DiffusionPrune.Export;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pipeline.StableDiffusion;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune export --model DIR --format safetensors,onnx --output DIR</c>: a deployable bundle (see <see cref="ModelExporter"/>).</summary>
public static class ExportCommand
{
    public static Command Create()
    {
        var model = CliCommon.ModelOption();
        // No default value here: a model's default is both formats, a Stable Diffusion pipeline's is onnx only.
        var format = new Option<string?>("--format")
        {
            Description = "Comma list of safetensors (diffusers layout) and onnx (model.onnx, opset 17); default safetensors,onnx. " +
                "A Stable Diffusion pipeline folder exports as an ONNX pipeline (text_encoder, unet, vae_decoder model.onnx): onnx only.",
        };
        var output = new Option<string>("--output") { Description = "Folder for the bundle (written whole, then put in place; an earlier bundle there is replaced, any other non-empty folder is refused).", Required = true };
        var command = new Command("export", "Export a model as a bundle: diffusers safetensors and/or ONNX, scheduler config and a model card.")
        {
            model, format, output,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            if (StableDiffusionPipeline.IsStableDiffusionFolder(parse.GetValue(model)!))
                return ExportPipeline(parse.GetValue(model)!, parse.GetValue(output)!, parse.GetValue(format));
            var request = new ExportRequest
            {
                ModelPath = parse.GetValue(model)!,
                OutputPath = parse.GetValue(output)!,
                Formats = ModelExporter.ParseFormats(parse.GetValue(format) ?? "safetensors,onnx"),
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

    /// <summary>A Stable Diffusion pipeline folder: the ONNX pipeline layout (<see cref="StableDiffusionOnnxExporter"/>), onnx format only.</summary>
    private static int ExportPipeline(string modelPath, string outputPath, string? formatList)
    {
        var formats = ModelExporter.ParseFormats(formatList ?? "onnx");
        using var pipeline = new DiffusionPipeline(TorchSharp.torch.CPU);
        var result = CliCommon.Await(pipeline.ExportStableDiffusionAsync(modelPath, outputPath, formats, new SynchronousProgress<StageProgress>(p =>
        {
            if (p.Fraction is null || p.Stage == PipelineStage.Load) Console.Error.WriteLine(p.Message);
        }), CliCommon.Interrupt));
        Console.WriteLine($"{StableDiffusionOnnxExporter.PipelineClassName}: " +
            string.Join(", ", result.Components.Select(c => $"{c.Folder} {c.Parameters:N0}")) + $" parameters; U-Net {result.UNetMacs:N0} MACs per sample" +
            (result.Pruned ? " (pruned)" : ""));
        foreach (var file in result.Files)
            Console.WriteLine($"wrote {Path.Combine(result.OutputPath, file)}");
        return 0;
    }
}
