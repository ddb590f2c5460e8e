using System.CommandLine;
using DiffusionPrune.Families;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune forward --model DIR --input IN.safetensors --output OUT.safetensors</c></summary>
public static class ForwardCommand
{
    public static Command Create()
    {
        var model = CliCommon.ModelOption();
        var input = new Option<string>("--input") { Description = "safetensors with 'sample', 'timestep' and, if needed, 'class_labels'.", Required = true };
        var output = new Option<string>("--output") { Description = "Where to write 'output' (F32).", Required = true };
        var device = CliCommon.DeviceOption();
        var command = new Command("forward", "Run one denoiser forward pass on tensors from a safetensors file.") { model, input, output, device };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var dev = CliCommon.ResolveDevice(parse.GetValue(device)!);
            using var loaded = ModelFamilies.Load(parse.GetValue(model)!, device: dev);
            ForwardRunner.Run(loaded, parse.GetValue(input)!, parse.GetValue(output)!, dev);
            Console.WriteLine($"wrote {parse.GetValue(output)}");
            return 0;
        }));
        return command;
    }
}
