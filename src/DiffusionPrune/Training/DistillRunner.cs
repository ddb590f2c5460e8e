using System.Text.Json.Nodes;
using DiffusionPrune.Data;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Training;

/// <summary>One distillation: a (pruned) student recovers from its teacher on a dataset; the result goes to a folder of its own.</summary>
public sealed record DistillRequest
{
    /// <summary>The student's folder (a pruned model, usually): named in the recipe, and its prune report and plan are carried over.</summary>
    public required string StudentPath { get; init; }
    public required string TeacherPath { get; init; }

    /// <summary>The distilled model's folder (diffusers layout + checkpoint/ for --resume).</summary>
    public required string OutputPath { get; init; }

    public KnowledgeDistillation Kd { get; init; } = KnowledgeDistillation.Normalized;
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 64;
    public double LearningRate { get; init; } = 1e-4;

    /// <summary>Warm-up steps; null: a tenth of the steps, at most 100.</summary>
    public int? WarmupSteps { get; init; }
    public double EmaDecay { get; init; } = 0.999;
    public double TaskWeight { get; init; } = 1.0;
    public double OutputWeight { get; init; } = 1.0;
    public double FeatureWeight { get; init; } = 1.0;

    /// <summary>
    /// mnist, an MNIST data file, or a folder of PNG/JPEG images (<see cref="ImageDatasets.Open"/>); null: mnist for a
    /// model, and for Stable Diffusion pipelines (which take no dataset) the teacher's own samples (<see cref="TeacherSamples"/>).
    /// </summary>
    public string? Data { get; init; }

    /// <summary>
    /// A pipeline's distillation: the prompts the teacher samples latents from and the student learns under (one text
    /// state each, plus the empty prompt); null takes <see cref="Pruning.PruneRunner.DefaultCalibrationPrompts"/>.
    /// Refused for models that are not Stable Diffusion pipelines.
    /// </summary>
    public IReadOnlyList<string>? Prompts { get; init; }

    /// <summary>A pipeline's distillation: latents the teacher samples per prompt (the pool the steps draw from).</summary>
    public int TeacherSamplesPerPrompt { get; init; } = 4;

    /// <summary>A pipeline's distillation: DDIM steps per teacher sample.</summary>
    public int TeacherSampleSteps { get; init; } = 25;

    /// <summary>A pipeline's distillation: the classifier-free guidance the teacher samples with (diffusers' default, 7.5).</summary>
    public double TeacherGuidanceScale { get; init; } = 7.5;
    public long Seed { get; init; }
    public int CheckpointEvery { get; init; } = 250;

    /// <summary>Continue from the checkpoint in <see cref="OutputPath"/> (after a cancel or a kill).</summary>
    public bool Resume { get; init; }

    public TrainOptions ToOptions(DistillationOptions distillation) => new()
    {
        Steps = Steps,
        BatchSize = BatchSize,
        LearningRate = LearningRate,
        WarmupSteps = WarmupSteps ?? Math.Min(100, Steps / 10),
        EmaDecay = EmaDecay,
        Seed = Seed,
        CheckpointEvery = CheckpointEvery,
        Distillation = distillation,
    };
}

/// <summary>
/// Distils a student from its teacher with <see cref="DiffusionTrainer"/> (L = task + output + feature terms, see
/// <see cref="DistillationOptions"/>): the student trains from a copy of its weights, so the model it came from is left
/// as it was; the teacher only runs forward. The released model is the EMA of the student's weights, with the recipe in
/// training_args.json (which the exported model card shows) and the student's prune report and plan carried over.
/// </summary>
public static class DistillRunner
{
    /// <param name="student">The student as loaded (not changed: a copy trains).</param>
    /// <param name="teacher">The teacher (runs forward only, in eval mode).</param>
    public static TrainResult Run(DistillRequest request, DiffusionModel student, DiffusionModel teacher, Action<TrainProgress>? progress = null,
        Action<string>? log = null, CancellationToken cancel = default)
    {
        if (request.Steps < 1) throw new ArgumentException("--steps must be at least 1.");
        if (student.InChannels != teacher.InChannels || !student.SampleSize.SequenceEqual(teacher.SampleSize) || student.NumClasses != teacher.NumClasses)
            throw new ArgumentException($"The student ({student.ClassName}, {student.InChannels} x {string.Join(" x ", student.SampleSize)}, " +
                $"{student.NumClasses?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "no"} classes) and the teacher ({teacher.ClassName}, {teacher.InChannels} x " +
                $"{string.Join(" x ", teacher.SampleSize)}, {teacher.NumClasses?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "no"} classes) do not make the same samples.");
        if (request.BatchSize < 1) throw new ArgumentException("--batch must be at least 1.");
        var (studentPipeline, teacherPipeline) = CheckPipelines(request, student);
        if (studentPipeline is not null)
            return RunPipeline(request, student, teacher, studentPipeline, teacherPipeline!, progress, log, cancel);
        string? schedulerPath = DiffusersModelLoader.FindSchedulerConfig(request.StudentPath) ?? DiffusersModelLoader.FindSchedulerConfig(request.TeacherPath);
        var data = ImageDatasets.Open(request.Data ?? ImageDatasets.Mnist, student.InChannels, student.SampleSize[0], student.SampleSize[^1]);
        ImageDatasets.RequireLabelsFor(data, student.NumClasses);
        string output = CheckOutput(request); // after every check above: it clears an earlier output when not resuming
        log?.Invoke($"distilling {student.ClassName} ({student.ParameterCount():N0} parameters) from its teacher ({teacher.ParameterCount():N0}), " +
            $"kd {request.Kd.ToString().ToLowerInvariant()}, {request.Steps} steps x {request.BatchSize} images of {data.Name}");

        var distillation = Recipe(request, teacher) with { TeacherImagesSeen = TeacherImagesSeen(request.TeacherPath) };
        var device = student.parameters().FirstOrDefault()?.device ?? CPU;
        using var copy = TrainableCopy(student, device);
        bool wasTraining = teacher.training;
        teacher.eval();
        try
        {
            var trainer = new DiffusionTrainer(copy, data, request.ToOptions(distillation), output)
            {
                SchedulerJson = schedulerPath is null ? null : File.ReadAllText(schedulerPath),
            };
            var result = trainer.Train(request.Resume, progress, cancel);
            CarryOver(request.StudentPath, output);
            return result;
        }
        finally
        {
            teacher.train(wasTraining);
        }
    }

    /// <summary>The Stable Diffusion pipeline folder <paramref name="path"/> names, or null for a model folder.</summary>
    private static string? PipelineFolderOf(string path) =>
        StableDiffusionPipeline.IsStableDiffusionFolder(path) ? PipelineIndex.Load(path).Folder : null;

    /// <summary>
    /// Refuses, before any work, what a pipeline distillation cannot be: a pipeline student with a model teacher or the
    /// reverse (the student's U-Net learns under the teacher's text states, so both must be pipelines), a text-conditioned
    /// U-Net given without its pipeline, pipelines whose text encoders differ, --data for a pipeline and --prompts for a
    /// model. Returns the two pipeline folders, both null for models.
    /// </summary>
    private static (string? Student, string? Teacher) CheckPipelines(DistillRequest request, DiffusionModel student)
    {
        string? studentPipeline = PipelineFolderOf(request.StudentPath), teacherPipeline = PipelineFolderOf(request.TeacherPath);
        if ((studentPipeline is null) != (teacherPipeline is null))
            throw new ArgumentException(studentPipeline is not null
                ? $"The student '{request.StudentPath}' is a Stable Diffusion pipeline but the teacher '{request.TeacherPath}' is not; give the pipeline folder " +
                  "(model_index.json) it was pruned from: its text encoder makes the prompts' states and its U-Net the targets."
                : $"The teacher '{request.TeacherPath}' is a Stable Diffusion pipeline but the student '{request.StudentPath}' is not; give the pruned pipeline " +
                  "folder (dprune prune's output for the pipeline) as --student.");
        if (studentPipeline is null)
        {
            if (ModelFamilies.ConditioningOf(student).Kind == ConditioningKind.TextStates)
                throw new ArgumentException($"The student is a {student.ClassName}, which learns under prompts' text states; give the Stable Diffusion " +
                    "pipeline folders (model_index.json) as --student and --teacher rather than their unet/ folders.");
            if (request.Prompts is not null)
                throw new ArgumentException($"--prompts is for distilling a Stable Diffusion pipeline; '{request.StudentPath}' is a model folder. Leave --prompts out.");
            return (null, null);
        }
        if (request.Data is not null)
            throw new ArgumentException($"--data is for image models; a Stable Diffusion pipeline distils without a dataset, on its teacher's samples " +
                "from --prompts. Leave --data out.");
        if (request.Prompts is { } prompts && (prompts.Count == 0 || prompts.Any(string.IsNullOrWhiteSpace)))
            throw new ArgumentException("--prompts holds no prompts (or an empty one): give one prompt per line.");
        if (TextEncoderDifference(studentPipeline, teacherPipeline!) is { } difference)
            throw new ArgumentException($"The student pipeline's text encoder differs from the teacher's ({difference}): the student's U-Net learns under " +
                "the teacher's text states and would sample under its own. Distil a pipeline pruned from this teacher (dprune prune keeps its text encoder).");
        return (studentPipeline, teacherPipeline);
    }

    /// <summary>The first file of tokenizer/ or text_encoder/ that differs between two pipelines (missing, or other bytes), or null when they are the same.</summary>
    private static string? TextEncoderDifference(string a, string b)
    {
        foreach (var component in new[] { "tokenizer", "text_encoder" })
        {
            string folderA = Path.Combine(a, component), folderB = Path.Combine(b, component);
            var filesA = Directory.EnumerateFiles(folderA).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
            var filesB = Directory.EnumerateFiles(folderB).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
            if (!filesA.SequenceEqual(filesB)) return $"{component}/ holds other files";
            foreach (var name in filesA)
            {
                var infoA = new FileInfo(Path.Combine(folderA, name!));
                var infoB = new FileInfo(Path.Combine(folderB, name!));
                if (infoA.Length != infoB.Length || SourceIdentity.ShortHash(infoA.FullName) != SourceIdentity.ShortHash(infoB.FullName))
                    return $"{component}/{name}";
            }
        }
        return null;
    }

    /// <summary>
    /// Data-free distillation of a pruned Stable Diffusion pipeline's U-Net from its teacher pipeline's: the prompts are
    /// encoded once by the teacher's text encoder, the teacher samples a pool of latents from them
    /// (<see cref="TeacherSamples"/>, which says why teacher samples rather than Gaussian latents), and each step draws
    /// latents and their prompts from the pool, noises them at random timesteps of the pipeline's scheduler and trains the
    /// student on the usual terms (task against the drawn noise, output and feature KD against the teacher under the same
    /// text states, the prompt dropped to the empty one one time in ten). The output is a copy of the student pipeline
    /// (components hard-linked, as a pruned pipeline's) whose unet/ is the distilled U-Net; the recipe
    /// (training_args.json), the student's prune report and plan and the checkpoint/ for --resume are at its root.
    /// </summary>
    private static TrainResult RunPipeline(DistillRequest request, DiffusionModel student, DiffusionModel teacher, string studentPipeline,
        string teacherPipeline, Action<TrainProgress>? progress, Action<string>? log, CancellationToken cancel)
    {
        string schedulerPath = Path.Combine(teacherPipeline, "scheduler", ModelFolder.SchedulerConfig);
        var schedulerConfig = Schedulers.SchedulerConfig.Load(schedulerPath);
        string output = CheckOutput(request);
        var prompts = request.Prompts ?? Pruning.PruneRunner.DefaultCalibrationPrompts;
        var device = student.parameters().FirstOrDefault()?.device ?? CPU;
        log?.Invoke($"encoding {prompts.Count} prompts{(request.Prompts is null ? " (built-in)" : "")} with the teacher's text encoder");
        using var states = StableDiffusionPipeline.EncodePromptsOf(teacherPipeline, prompts, classifierFreeGuidance: true, device);
        log?.Invoke($"sampling {request.TeacherSamplesPerPrompt} latents per prompt from the teacher (DDIM {request.TeacherSampleSteps} steps, " +
            $"guidance {request.TeacherGuidanceScale.ToString(System.Globalization.CultureInfo.InvariantCulture)})");
        using var data = TeacherSamples.Generate(teacher, states, prompts, schedulerConfig, request.TeacherSamplesPerPrompt, request.TeacherSampleSteps,
            request.TeacherGuidanceScale, request.Seed, log, cancel);
        log?.Invoke($"distilling {student.ClassName} ({student.ParameterCount():N0} parameters) from its teacher ({teacher.ParameterCount():N0}), " +
            $"kd {request.Kd.ToString().ToLowerInvariant()}, {request.Steps} steps x {request.BatchSize} latents of the {data.Name}");

        var distillation = Recipe(request, teacher) with { DataFree = data.ToJson(builtInPrompts: request.Prompts is null) };
        using var copy = TrainableCopy(student, device);
        bool wasTraining = teacher.training;
        teacher.eval();
        try
        {
            var trainer = new DiffusionTrainer(copy, data, request.ToOptions(distillation), output)
            {
                SchedulerJson = File.ReadAllText(schedulerPath),
                TextStates = data.TextStates,
                ModelSubfolder = "unet",
            };
            var result = trainer.Train(request.Resume, progress, cancel);
            LinkComponents(studentPipeline, output);
            CarryOver(studentPipeline, output);
            return result;
        }
        finally
        {
            teacher.train(wasTraining);
        }
    }

    /// <summary>
    /// Every entry of the student pipeline but unet/ (the distilled one is in place), its prune report and plan (carried
    /// over by <see cref="CarryOver"/>) and its evaluation report (it measured the student, not the distilled U-Net), hard-linked where the file system allows (else copied), as a pruned pipeline's are;
    /// written after training, so an interrupted run leaves no pipeline that would load with a missing U-Net.
    /// </summary>
    private static void LinkComponents(string studentPipeline, string output)
    {
        foreach (var entry in Directory.EnumerateFileSystemEntries(studentPipeline))
        {
            string name = Path.GetFileName(entry);
            if (name is "unet" or ModelFolder.PruneReport or ModelFolder.PrunePlan or ModelFolder.TrainingArgs or ModelFolder.EvalReport or DiffusionTrainer.CheckpointFolder
                || name.StartsWith('.')) continue;
            string target = Path.Combine(output, name);
            if (Directory.Exists(target)) Directory.Delete(target, recursive: true); // a resumed run's earlier copy
            else if (File.Exists(target)) File.Delete(target);
            if (Directory.Exists(entry)) FileLinks.LinkOrCopyFolder(entry, target);
            else FileLinks.LinkOrCopy(entry, target);
        }
    }

    /// <summary>
    /// Refuses, before any work, an output that would lose something: a non-empty folder that is not an earlier model
    /// output, or --resume without a checkpoint. Without --resume an earlier output is started afresh. Returns the folder.
    /// </summary>
    public static string CheckOutput(DistillRequest request)
    {
        string full = AtomicFolder.Check(request.OutputPath, "the distilled model",
            folder => File.Exists(Path.Combine(folder, ModelFolder.Config)) || Directory.Exists(Path.Combine(folder, DiffusionTrainer.CheckpointFolder))
                || File.Exists(Path.Combine(folder, ModelFolder.PipelineIndex)) && File.Exists(Path.Combine(folder, ModelFolder.TrainingArgs)));
        foreach (var source in new[] { request.StudentPath, request.TeacherPath })
            if (string.Equals(Path.TrimEndingDirectorySeparator(Path.GetFullPath(source)), full, StringComparison.Ordinal))
                throw new ArgumentException($"--output '{request.OutputPath}' is the student's or the teacher's folder; give a new folder for the distilled model.");
        if (request.Resume)
        {
            if (!File.Exists(Path.Combine(full, DiffusionTrainer.CheckpointFolder, "state.json")))
                throw new FileNotFoundException($"--resume was given but '{request.OutputPath}' holds no checkpoint. Start without --resume.");
        }
        else if (Directory.Exists(full))
        {
            Directory.Delete(full, recursive: true); // an earlier output (checked above): this run starts afresh
        }
        return full;
    }

    /// <summary>The loss recipe a request asks for, against <paramref name="teacher"/>: KD form and weights, the teacher named by its source.</summary>
    private static DistillationOptions Recipe(DistillRequest request, DiffusionModel teacher) => new()
    {
        Teacher = teacher,
        TeacherName = SourceIdentity.Describe(request.TeacherPath),
        Kd = request.Kd,
        TaskWeight = request.TaskWeight,
        OutputWeight = request.OutputWeight,
        FeatureWeight = request.FeatureWeight,
    };

    /// <summary>A model of the student's structure with a copy of its weights, on <paramref name="device"/>.</summary>
    public static DiffusionModel TrainableCopy(DiffusionModel student, Device device)
    {
        var copy = ModelFamilies.Of(student).WithStructure(student, student.Structure);
        var weights = student.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().cpu(), StringComparer.Ordinal);
        DiffusersModelLoader.LoadStrict(copy, weights, "the student");
        return copy.to(device);
    }

    private static long? TeacherImagesSeen(string teacherPath)
    {
        string path = Path.Combine(DiffusersModelLoader.ResolveModelFolder(teacherPath), ModelFolder.TrainingArgs);
        if (!File.Exists(path)) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllText(path))?["images_seen"]?.GetValue<long>();
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException)
        {
            return null; // not ours: the fraction is left out
        }
    }

    /// <summary>The student's prune report and plan go with it, so the distilled model's card tells both steps.</summary>
    private static void CarryOver(string studentPath, string output)
    {
        // A pipeline keeps its report and plan at its root (PruneRunner.Save), a model beside its config.
        string folder = PipelineIndex.Find(studentPath) is not null ? studentPath : DiffusersModelLoader.ResolveModelFolder(studentPath);
        foreach (var name in new[] { ModelFolder.PruneReport, ModelFolder.PrunePlan })
        {
            string source = Path.Combine(folder, name);
            if (File.Exists(source)) AtomicFile.Replace(Path.Combine(output, name), File.ReadAllBytes(source));
        }
    }
}
