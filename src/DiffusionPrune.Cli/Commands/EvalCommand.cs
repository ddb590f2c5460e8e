using System.CommandLine;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pipeline.StableDiffusion;

namespace DiffusionPrune.Cli.Commands;

/// <summary><c>dprune eval --model DIR --samples N --steps S [--scheduler ...] --output report.json</c></summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var model = CliCommon.ModelOption();
        var samples = new Option<int>("--samples") { Description = "Number of generated images.", DefaultValueFactory = _ => 1000 };
        var steps = new Option<int>("--steps") { Description = "Sampling steps.", DefaultValueFactory = _ => 25 };
        var scheduler = new Option<string?>("--scheduler") { Description = "ddpm | ddim | dpm++2m (betas from the model's scheduler config).", DefaultValueFactory = _ => "ddim" };
        var schedulerConfig = new Option<string?>("--scheduler-config") { Description = "scheduler_config.json (default: the model's own)." };
        var guidance = new Option<double>("--guidance-scale") { Description = "Classifier-free guidance for class-conditional models.", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 0 };
        var batch = new Option<int>("--batch") { Description = "Images sampled at once.", DefaultValueFactory = _ => 100 };
        var reference = new Option<string?>("--reference-model") { Description = "Also sample this model from the same noise and report paired SSIM/PSNR." };
        var featureNet = new Option<string?>("--featurenet") { Description = "Feature network folder (default samples/models/featurenet)." };
        var data = new Option<string>("--data")
        {
            Description = "Real images to compare with: mnist (the test split) or a folder of PNG/JPEG images, resized to the model's size and channels " +
                          "(the figures are then measured in the MNIST feature net's space, as grey 32 x 32: they compare models on those images).",
            DefaultValueFactory = _ => "mnist",
        };
        var prompts = new Option<string?>("--prompts") { Description = "Stable Diffusion pipelines: a text file of prompts to evaluate on, one per line (default: eight built-in prompts, none of them a calibration prompt)." };
        var output = new Option<string?>("--output") { Description = "Write the report as JSON here (for pipelines also the same-seed grid, as a .png beside it)." };
        var device = CliCommon.DeviceOption();
        var backend = CliCommon.BackendOption();
        var provider = CliCommon.ProviderOption();
        var quiet = CliOutput.QuietOption();
        var json = CliOutput.JsonOption();
        var command = new Command("eval", "Measure a model: FID-proxy (bootstrap interval), KID, precision/recall, class accuracy, SSIM/PSNR, params, MACs, latency.")
        {
            model, samples, steps, scheduler, schedulerConfig, guidance, seed, batch, reference, featureNet, data, prompts, output, device, backend, provider, quiet, json,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            if (StableDiffusionPipeline.IsStableDiffusionFolder(parse.GetValue(model)!))
                return EvaluatePipeline(parse, model, samples, steps, scheduler, guidance, seed, reference, prompts, output, device, quiet, json,
                    [schedulerConfig, batch, featureNet, data, backend, provider]);
            if (parse.GetValue(prompts) is not null)
                throw new ArgumentException("--prompts is for Stable Diffusion pipelines; this model is not text-conditioned.");
            var request = new EvalRequest
            {
                ModelPath = parse.GetValue(model)!,
                Samples = parse.GetValue(samples),
                Steps = parse.GetValue(steps),
                SchedulerName = parse.GetValue(scheduler),
                SchedulerConfigPath = parse.GetValue(schedulerConfig),
                GuidanceScale = parse.GetValue(guidance),
                Seed = parse.GetValue(seed),
                BatchSize = parse.GetValue(batch),
                ReferenceModelPath = parse.GetValue(reference),
                FeatureNetFolder = parse.GetValue(featureNet),
                Data = parse.GetValue(data),
                Backend = parse.GetValue(backend)!,
                Provider = parse.GetValue(provider)!,
            };
            var console = CliOutput.From(parse, quiet, json);
            using var pipeline = new DiffusionPipeline(CliCommon.ResolveDevice(parse.GetValue(device)!));
            var report = console.Track(progress => pipeline.EvaluateAsync(request, progress, CliCommon.Interrupt), _ => "sampled");
            console.EndProgress();
            var rows = new List<(string, string)>
            {
                ("model", report.Model),
                ("runtime", report.Runtime),
                ("parameters", $"{report.Parameters:N0}"),
                ("MACs / image", $"{report.Macs:N0}"),
                ("samples x steps", $"{report.Samples} x {report.Steps} ({report.Scheduler})"),
                ("compared with", $"{report.Reference}, in the {ModelEvaluator.FeatureSpace}"),
                ("FID-proxy", $"{report.Fid.Value:F3}  [{report.Fid.Lower:F3}, {report.Fid.Upper:F3}] 95% bootstrap, N={report.Fid.SampleCount}"),
                ("KID", $"{report.Kid.Mean:F5} ± {report.Kid.Std:F5}"),
                ("precision / recall", $"{report.PrecisionRecall.Precision:F3} / {report.PrecisionRecall.Recall:F3}"),
            };
            if (report.ClassAccuracy is double acc) rows.Add(("class accuracy", $"{acc:P1}"));
            if (report.Ssim is double ssim) rows.Add(("SSIM / PSNR to ref", $"{ssim:F4} / {report.Psnr:F2} dB"));
            rows.Add(("sampler ms / image", $"{report.SamplerMillisecondsPerImage:F1}"));
            console.Pairs(rows);
            if (parse.GetValue(output) is string path)
            {
                report.Save(path);
                console.Result($"wrote {path}");
            }
            console.Summary(report.ToJson());
            return 0;
        }));
        return command;
    }

    /// <summary>
    /// A Stable Diffusion pipeline against its reference (<see cref="StableDiffusionEvaluator"/>): --samples is images per
    /// prompt (2 unless given), the guidance 7.5 unless given; the options that only models take are refused when given.
    /// </summary>
    private static int EvaluatePipeline(ParseResult parse, Option<string> model, Option<int> samples, Option<int> steps, Option<string?> scheduler,
        Option<double> guidance, Option<long> seed, Option<string?> reference, Option<string?> prompts, Option<string?> output, Option<string> device,
        Option<bool> quiet, Option<bool> json, Option[] modelOnly)
    {
        foreach (var option in modelOnly)
            if (parse.GetResult(option) is { Implicit: false })
                throw new ArgumentException($"{option.Name} is for models, not Stable Diffusion pipelines (they are compared with a reference pipeline, in the torch backend).");
        string referencePath = parse.GetValue(reference)
            ?? throw new ArgumentException("A Stable Diffusion pipeline is evaluated against a reference pipeline (usually the one it was pruned from): give --reference-model PIPELINE.");
        string? outputPath = parse.GetValue(output);
        var request = new StableDiffusionEvalRequest
        {
            ModelPath = parse.GetValue(model)!,
            ReferencePath = referencePath,
            Prompts = parse.GetValue(prompts) is { } file ? PruneCommand.ReadPrompts(file) : null,
            ImagesPerPrompt = parse.GetResult(samples) is { Implicit: false } ? parse.GetValue(samples) : 2,
            Steps = parse.GetValue(steps),
            GuidanceScale = parse.GetResult(guidance) is { Implicit: false } ? parse.GetValue(guidance) : StableDiffusionSampleRunner.DefaultGuidanceScale,
            Seed = parse.GetValue(seed),
            SchedulerName = parse.GetValue(scheduler) ?? "ddim",
            GridPath = outputPath is null ? null : Path.ChangeExtension(outputPath, ".png"),
        };
        var console = CliOutput.From(parse, quiet, json);
        using var pipeline = new DiffusionPipeline(CliCommon.ResolveDevice(parse.GetValue(device)!));
        var report = console.Track(progress => pipeline.EvaluateStableDiffusionAsync(request, progress, CliCommon.Interrupt), _ => "sampled");
        console.EndProgress();
        console.Pairs(StableDiffusionEvaluator.Rows(report));
        if (outputPath is not null)
        {
            report.Save(outputPath);
            console.Result($"wrote {outputPath} and {request.GridPath}");
        }
        console.Summary(report.ToJson());
        return 0;
    }
}
