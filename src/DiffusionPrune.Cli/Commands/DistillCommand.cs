using System.CommandLine;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Training;

namespace DiffusionPrune.Cli.Commands;

/// <summary>
/// <c>dprune distill --student DIR --teacher DIR --kd normalized|plain|none --steps N --batch B --data mnist|DIR --output DIR [--resume]</c>:
/// recovers a pruned model from its original (see <see cref="DistillRunner"/>). With Stable Diffusion pipeline folders
/// (<c>--student PRUNED_PIPELINE --teacher PIPELINE [--prompts FILE]</c>) it distils without a dataset, on the teacher's
/// samples from the prompts (see <see cref="TeacherSamples"/>), and writes a pipeline copy with the distilled unet/.
/// </summary>
public static class DistillCommand
{
    public static Command Create()
    {
        var student = new Option<string>("--student") { Description = "The model to recover: a pruned model folder (dprune prune's output).", Required = true };
        var teacher = new Option<string>("--teacher") { Description = "The model it was pruned from.", Required = true };
        var kd = new Option<string>("--kd")
        {
            Description = "normalized (LAPTOP-Diff: each block's feature error divided by the teacher feature's squared norm) | plain (mean squared errors, BK-SDM) | none (the task loss alone: fine-tuning).",
            DefaultValueFactory = _ => "normalized",
        };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps.", Required = true };
        var batch = new Option<int>("--batch") { Description = "Batch size.", DefaultValueFactory = _ => 64 };
        var data = CliCommon.DataOption();
        var prompts = new Option<string?>("--prompts") { Description = "Stable Diffusion pipelines: a text file of prompts the teacher samples latents from, one per line (blank lines skipped; default: eight built-in generic prompts)." };
        var teacherSamples = new Option<int>("--teacher-samples") { Description = "Stable Diffusion pipelines: latents the teacher samples per prompt.", DefaultValueFactory = _ => 4 };
        var teacherSteps = new Option<int>("--teacher-steps") { Description = "Stable Diffusion pipelines: DDIM steps per teacher sample.", DefaultValueFactory = _ => 25 };
        var teacherGuidance = new Option<double>("--teacher-guidance") { Description = "Stable Diffusion pipelines: the classifier-free guidance the teacher samples with.", DefaultValueFactory = _ => 7.5 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => 1e-4 };
        var warmup = new Option<int?>("--warmup") { Description = "Warm-up steps (default: a tenth of the steps, at most 100)." };
        var ema = new Option<double>("--ema") { Description = "EMA decay of the released weights.", DefaultValueFactory = _ => 0.999 };
        var taskWeight = new Option<double>("--task-weight") { Description = "Weight of the denoising (task) loss.", DefaultValueFactory = _ => 1.0 };
        var outputWeight = new Option<double>("--output-weight") { Description = "Weight of ||eps_student - eps_teacher||^2.", DefaultValueFactory = _ => 1.0 };
        var featureWeight = new Option<double>("--feature-weight") { Description = "Weight of the block-output feature terms.", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 0 };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Steps between checkpoints (for --resume).", DefaultValueFactory = _ => 250 };
        var output = new Option<string>("--output") { Description = "Folder for the distilled model (diffusers layout + checkpoint/).", Required = true };
        var resume = new Option<bool>("--resume") { Description = "Continue from the checkpoint in --output (after Ctrl+C or a kill)." };
        var device = CliCommon.DeviceOption();
        var quiet = CliOutput.QuietOption();
        var json = CliOutput.JsonOption();
        var command = new Command("distill", "Recover a pruned model (or a pruned Stable Diffusion pipeline's U-Net) by distillation from its original (task + output + normalized feature loss).")
        {
            student, teacher, kd, steps, batch, data, prompts, teacherSamples, teacherSteps, teacherGuidance, lr, warmup, ema, taskWeight, outputWeight, featureWeight, seed, checkpointEvery, output, resume, device, quiet, json,
        };
        command.SetAction(parse => CliCommon.Run(() =>
        {
            var request = new DistillRequest
            {
                StudentPath = parse.GetValue(student)!,
                TeacherPath = parse.GetValue(teacher)!,
                OutputPath = parse.GetValue(output)!,
                Kd = parse.GetValue(kd) switch
                {
                    "normalized" => KnowledgeDistillation.Normalized,
                    "plain" => KnowledgeDistillation.Plain,
                    "none" => KnowledgeDistillation.None,
                    var other => throw new ArgumentException($"--kd must be normalized, plain or none, not '{other}'."),
                },
                Steps = parse.GetValue(steps),
                BatchSize = parse.GetValue(batch),
                // Only when given: a pipeline refuses --data, and a model takes mnist by default.
                Data = parse.GetResult(data) is { Implicit: false } ? parse.GetValue(data) : null,
                Prompts = parse.GetValue(prompts) is { } promptFile ? PruneCommand.ReadPrompts(promptFile) : null,
                TeacherSamplesPerPrompt = parse.GetValue(teacherSamples),
                TeacherSampleSteps = parse.GetValue(teacherSteps),
                TeacherGuidanceScale = parse.GetValue(teacherGuidance),
                LearningRate = parse.GetValue(lr),
                WarmupSteps = parse.GetValue(warmup),
                EmaDecay = parse.GetValue(ema),
                TaskWeight = parse.GetValue(taskWeight),
                OutputWeight = parse.GetValue(outputWeight),
                FeatureWeight = parse.GetValue(featureWeight),
                Seed = parse.GetValue(seed),
                CheckpointEvery = parse.GetValue(checkpointEvery),
                Resume = parse.GetValue(resume),
            };
            if (request.BatchSize < 1) throw new ArgumentException("--batch must be at least 1.");
            if (request.CheckpointEvery < 1) throw new ArgumentException("--checkpoint-every must be at least 1.");
            foreach (var (name, value) in new[] { ("--lr", request.LearningRate), ("--task-weight", request.TaskWeight), ("--output-weight", request.OutputWeight), ("--feature-weight", request.FeatureWeight) })
                if (!double.IsFinite(value) || value < 0) throw new ArgumentException($"{name} must be a finite number of at least 0, not {value}.");
            if (!(request.EmaDecay is >= 0 and < 1)) throw new ArgumentException($"--ema must be at least 0 and below 1, not {request.EmaDecay}.");
            var console = CliOutput.From(parse, quiet, json);
            using var pipeline = new DiffusionPipeline(CliCommon.ResolveDevice(parse.GetValue(device)!));
            var result = console.Track(progress => pipeline.DistillAsync(request, progress, CliCommon.Interrupt), _ => "step", detail: true);
            console.EndProgress();
            console.Result($"done: {result.Steps} steps, final loss {result.FinalLoss:F4}, {result.WallTime:hh\\:mm\\:ss}; model in {result.OutputFolder}");
            console.Summary(new
            {
                Kd = request.Kd.ToString().ToLowerInvariant(),
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
