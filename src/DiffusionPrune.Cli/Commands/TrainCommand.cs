using System.CommandLine;
using DiffusionPrune.Data;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Training;
using TorchSharp;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune train --arch unet|dit --config FILE --data mnist --steps N --batch B --output DIR [--resume]</c></summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var arch = new Option<string>("--arch") { Description = $"{string.Join(" | ", ModelFamilies.All.Select(f => f.ShortName))} (must match the config's _class_name).", Required = true };
        var config = new Option<string>("--config") { Description = "A diffusers config.json for the model to train.", Required = true };
        var data = CliCommon.DataOption();
        var steps = new Option<int>("--steps") { Description = "Optimizer steps.", Required = true };
        var batch = new Option<int>("--batch") { Description = "Batch size.", DefaultValueFactory = _ => 64 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => 5e-4 };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps.", DefaultValueFactory = _ => 200 };
        var ema = new Option<double>("--ema") { Description = "EMA decay.", DefaultValueFactory = _ => 0.999 };
        var classDropout = new Option<double>("--class-dropout") { Description = "Label dropout for classifier-free guidance (models with a null class).", DefaultValueFactory = _ => 0.1 };
        var attentionInit = new Option<string>("--attention-init") { Description = "DiT only: xavier (the DiT paper) | shared-qk (key projections start equal to the query projections, so attention starts local; see DiTTransformer2DModel.InitializeForTraining).", DefaultValueFactory = _ => "xavier" };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 0 };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Steps between checkpoints.", DefaultValueFactory = _ => 250 };
        var output = new Option<string>("--output") { Description = "Output folder (diffusers layout + checkpoint/).", Required = true };
        var resume = new Option<bool>("--resume") { Description = "Continue from the checkpoint in --output." };
        var device = CliCommon.DeviceOption();
        var quiet = CliOutput.QuietOption();
        var json = CliOutput.JsonOption();
        var command = new Command("train", "Train a denoiser on MNIST with the DDPM epsilon objective.")
        {
            arch, config, data, steps, batch, lr, warmup, ema, classDropout, attentionInit, seed, checkpointEvery, output, resume, device, quiet, json,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var dev = CliCommon.ResolveDevice(parse.GetValue(device)!);
            var configJson = ConfigJson.Load(parse.GetValue(config)!);
            var family = ModelFamilies.ForShortName(parse.GetValue(arch)!)
                ?? throw new ArgumentException($"--arch must be {string.Join(" or ", ModelFamilies.All.Select(f => f.ShortName))}, not '{parse.GetValue(arch)}'.");
            if (configJson.ClassName != family.ClassName)
                throw new ArgumentException($"--arch {parse.GetValue(arch)} needs a {family.ClassName} config, but '{parse.GetValue(config)}' describes {configJson.ClassName ?? "no _class_name"}.");
            // weights, AdamW state, EMA and a batch's saved activations, refused before anything is allocated
            ModelFamilies.Estimate(configJson).Training(parse.GetValue(batch)).EnsureFits("train");
            TorchSharp.torch.manual_seed(parse.GetValue(seed));
            using var model = ModelFamilies.Create(configJson);
            bool sharedQueryKey = parse.GetValue(attentionInit) switch
            {
                "xavier" => false,
                "shared-qk" => true,
                var other => throw new ArgumentException($"--attention-init must be xavier or shared-qk, not '{other}'."),
            };
            if (sharedQueryKey && !family.SupportsSharedQueryKeyInit)
                throw new ArgumentException("--attention-init shared-qk applies to DiT models (--arch dit).");
            family.InitializeForTraining(model, sharedQueryKey); // DiT: adaLN-Zero; a resumed run loads its weights over it
            var dataset = ImageDatasets.Open(parse.GetValue(data)!, model.InChannels, model.SampleSize[0], model.SampleSize[^1]);
            model.to(dev);
            var options = new TrainOptions
            {
                Steps = parse.GetValue(steps),
                BatchSize = parse.GetValue(batch),
                LearningRate = parse.GetValue(lr),
                WarmupSteps = parse.GetValue(warmup),
                EmaDecay = parse.GetValue(ema),
                ClassDropout = parse.GetValue(classDropout),
                Seed = parse.GetValue(seed),
                CheckpointEvery = parse.GetValue(checkpointEvery),
            };
            var console = CliOutput.From(parse, quiet, json);
            console.Result($"training {model.ClassName}: {model.ParameterCount():N0} parameters, {dataset.Count} images ({dataset.Name}), {options.Steps} steps x {options.BatchSize}");
            var trainer = new DiffusionTrainer(model, dataset, options, parse.GetValue(output)!);
            double smoothed = double.NaN;
            var result = trainer.Train(parse.GetValue(resume), p =>
            {
                smoothed = double.IsNaN(smoothed) ? p.Loss : 0.98 * smoothed + 0.02 * p.Loss;
                string rss = p.ResidentBytes is long b ? $" rss {b / (1 << 20)} MB" : "";
                console.Progress("step", p.Step, p.TotalSteps, $"loss {smoothed:F4} {p.ImagesPerSecond:F0} img/s eta {p.Eta:hh\\:mm\\:ss}{rss}");
            });
            console.EndProgress();
            console.Result($"done: {result.Steps} steps, final loss {result.FinalLoss:F4}, {result.WallTime:hh\\:mm\\:ss}; model in {result.OutputFolder}");
            console.Summary(new
            {
                Model = model.ClassName,
                Parameters = model.ParameterCount(),
                result.Steps,
                result.FinalLoss,
                WallSeconds = Math.Round(result.WallTime.TotalSeconds, 1),
                OutputPath = Path.GetFullPath(result.OutputFolder),
            });
            return 0;
        }));
        return command;
    }
}
