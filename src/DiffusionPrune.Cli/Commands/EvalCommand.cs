using System.CommandLine;
using DiffusionPrune.Evaluation;

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
        var output = new Option<string?>("--output") { Description = "Write the report as JSON here." };
        var device = CliCommon.DeviceOption();
        var backend = CliCommon.BackendOption();
        var provider = CliCommon.ProviderOption();
        var quiet = CliOutput.QuietOption();
        var json = CliOutput.JsonOption();
        var command = new Command("eval", "Measure a model: FID-proxy (bootstrap interval), KID, precision/recall, class accuracy, SSIM/PSNR, params, MACs, latency.")
        {
            model, samples, steps, scheduler, schedulerConfig, guidance, seed, batch, reference, featureNet, output, device, backend, provider, quiet, json,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
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
                Backend = parse.GetValue(backend)!,
                Provider = parse.GetValue(provider)!,
            };
            var console = CliOutput.From(parse, quiet, json);
            var report = ModelEvaluator.Evaluate(request, CliCommon.ResolveDevice(parse.GetValue(device)!),
                (i, n) => console.Progress("sampled", i, n), console.Note);
            console.EndProgress();
            console.Result($"{"model",-22} {report.Model}");
            console.Result($"{"runtime",-22} {report.Runtime}");
            console.Result($"{"parameters",-22} {report.Parameters:N0}");
            console.Result($"{"MACs / image",-22} {report.Macs:N0}");
            console.Result($"{"samples x steps",-22} {report.Samples} x {report.Steps} ({report.Scheduler})");
            console.Result($"{"FID-proxy",-22} {report.Fid.Value:F3}  [{report.Fid.Lower:F3}, {report.Fid.Upper:F3}] 95% bootstrap, N={report.Fid.SampleCount}");
            console.Result($"{"KID",-22} {report.Kid.Mean:F5} ± {report.Kid.Std:F5}");
            console.Result($"{"precision / recall",-22} {report.PrecisionRecall.Precision:F3} / {report.PrecisionRecall.Recall:F3}");
            if (report.ClassAccuracy is double acc) console.Result($"{"class accuracy",-22} {acc:P1}");
            if (report.Ssim is double ssim) console.Result($"{"SSIM / PSNR to ref",-22} {ssim:F4} / {report.Psnr:F2} dB");
            console.Result($"{"sampler ms / image",-22} {report.SamplerMillisecondsPerImage:F1}");
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
}
