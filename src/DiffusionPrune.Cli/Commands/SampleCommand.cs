using System.CommandLine;
using DiffusionPrune.Inference;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pipeline.StableDiffusion;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune sample</c>: run the sampling loop from given or seeded noise.</summary>
public static class SampleCommand
{
    public static Command Create()
    {
        var model = CliCommon.ModelOption();
        var schedulerConfig = new Option<string?>("--scheduler-config") { Description = "scheduler_config.json (default: the model folder's own)." };
        var scheduler = new Option<string?>("--scheduler") { Description = "Override the scheduler class: ddpm | ddim | dpm++2m | pndm | euler | euler-a (betas come from the config)." };
        var steps = new Option<int>("--steps") { Description = "Inference steps.", DefaultValueFactory = _ => 25 };
        var eta = new Option<double>("--eta") { Description = "DDIM eta (0 = deterministic).", DefaultValueFactory = _ => 0.0 };
        var noise = new Option<string?>("--noise") { Description = "safetensors holding the initial noise [B, C, H, W]." };
        var noiseKey = new Option<string>("--noise-key") { Description = "Tensor name inside --noise.", DefaultValueFactory = _ => "noise" };
        var seed = new Option<long>("--seed") { Description = "Seed for the noise when --noise is not given (and for stochastic steps).", DefaultValueFactory = _ => 0 };
        var count = new Option<int?>("--count") { Description = "Number of samples when drawing noise (default 16; 1 for a Stable Diffusion pipeline)." };
        var labels = new Option<string?>("--labels") { Description = "Class labels, comma separated, cycled over the batch (default 0,1,2,...)." };
        var guidance = new Option<double?>("--guidance-scale")
        {
            Description = "Classifier-free guidance weight: class-conditional models with a null class (default 1, none), or a Stable Diffusion " +
                "pipeline's prompt against the negative prompt (default 7.5; 1 or less runs the prompt alone).",
        };
        var prompt = new Option<string?>("--prompt") { Description = "The text to draw (Stable Diffusion pipeline folders only; they need one)." };
        var negativePrompt = new Option<string?>("--negative-prompt") { Description = "What guidance steers away from (Stable Diffusion; default \"\")." };
        var output = new Option<string>("--output")
        {
            Description = "OUT.safetensors (trajectory [steps,B,C,H,W] + final; a Stable Diffusion pipeline adds the decoded image) or OUT.png " +
                "(image grid; a Stable Diffusion pipeline's images decoded through its VAE).",
            Required = true,
        };
        var device = CliCommon.DeviceOption();
        var backend = CliCommon.BackendOption();
        var provider = CliCommon.ProviderOption();
        var command = new Command("sample", "Sample images with a model and a diffusers scheduler, or from a prompt with a Stable Diffusion pipeline folder.")
        {
            model, schedulerConfig, scheduler, steps, eta, noise, noiseKey, seed, count, labels, guidance, prompt, negativePrompt, output, device, backend, provider,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            // Defaults follow the model: diffusers' StableDiffusionPipeline guides at 7.5 and draws one image per prompt.
            bool textToImage = StableDiffusionPipeline.IsStableDiffusionFolder(parse.GetValue(model)!);
            var request = new SampleRequest
            {
                ModelPath = parse.GetValue(model)!,
                SchedulerConfigPath = parse.GetValue(schedulerConfig),
                SchedulerName = parse.GetValue(scheduler),
                Steps = parse.GetValue(steps),
                Eta = parse.GetValue(eta),
                NoisePath = parse.GetValue(noise),
                NoiseKey = parse.GetValue(noiseKey)!,
                Seed = parse.GetValue(seed),
                Count = parse.GetValue(count) ?? (textToImage ? StableDiffusionSampleRunner.DefaultCount : 16),
                Labels = ParseLabels(parse.GetValue(labels)),
                GuidanceScale = parse.GetValue(guidance) ?? (textToImage ? StableDiffusionSampleRunner.DefaultGuidanceScale : 1.0),
                Prompt = parse.GetValue(prompt),
                NegativePrompt = parse.GetValue(negativePrompt),
                OutputPath = parse.GetValue(output)!,
                Backend = parse.GetValue(backend)!,
                Provider = parse.GetValue(provider)!,
            };
            var dev = CliCommon.ResolveDevice(parse.GetValue(device)!);
            var started = DateTime.UtcNow;
            var console = new CliOutput(quiet: false, json: false);
            using var pipeline = new DiffusionPipeline(dev);
            console.Track(progress => pipeline.SampleAsync(request, progress, CliCommon.Interrupt), _ => "step");
            console.EndProgress();
            console.Result($"wrote {request.OutputPath} ({(DateTime.UtcNow - started).TotalSeconds:F1} s)");
            return 0;
        }));
        return command;
    }

    private static int[]? ParseLabels(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        try
        {
            return text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse).ToArray();
        }
        catch (FormatException)
        {
            throw new ArgumentException($"--labels must be integers separated by commas, not '{text}'.");
        }
    }
}
