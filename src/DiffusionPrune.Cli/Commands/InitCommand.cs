using System.CommandLine;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;

namespace DiffusionPrune.Cli.Commands;

/// <summary>
/// <c>dprune init --config FILE --output DIR [--seed S]</c>: writes a model folder (config.json + safetensors) with the
/// fresh, randomly initialised weights of the model a diffusers config describes: to try a shape (its memory, its time
/// per step, its export) before any weights for it exist, e.g. Stable Diffusion 1.5's U-Net in benchmarks/sd15-unet.sh.
/// </summary>
public static class InitCommand
{
    public static Command Create()
    {
        var config = new Option<string>("--config") { Description = "A diffusers config.json (any class dprune loads: " + string.Join(", ", ModelFamilies.All.Select(f => f.ClassName)) + ").", Required = true };
        var output = new Option<string>("--output") { Description = "The model folder to write (must not exist yet, or be empty).", Required = true };
        var seed = new Option<long>("--seed") { Description = "Seed of the random initialisation.", DefaultValueFactory = _ => 0 };
        var command = new Command("init", "Write a model folder with fresh random weights for a diffusers config (to measure a shape before weights exist).") { config, output, seed };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            string folder = parse.GetValue(output)!;
            if (Directory.Exists(folder) && Directory.EnumerateFileSystemEntries(folder).Any())
                throw new ArgumentException($"--output '{folder}' exists and is not empty; give a new folder.");
            var configJson = ConfigJson.Load(parse.GetValue(config)!);
            TorchSharp.torch.manual_seed(parse.GetValue(seed));
            using var model = ModelFamilies.Create(configJson);
            DiffusersModelLoader.Save(model, folder, new Dictionary<string, string> { ["dprune_init_seed"] = parse.GetValue(seed).ToString(System.Globalization.CultureInfo.InvariantCulture) });
            long parameters = model.parameters().Sum(p => p.numel());
            Console.WriteLine($"wrote {folder}: {model.ClassName}, {parameters:N0} parameters, random weights (seed {parse.GetValue(seed)})");
            return 0;
        }));
        return command;
    }
}
