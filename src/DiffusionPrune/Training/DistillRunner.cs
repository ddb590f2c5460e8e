using System.Text.Json.Nodes;
using DiffusionPrune.Data;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
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

    /// <summary>mnist, an MNIST data file, or a folder of PNG/JPEG images (<see cref="ImageDatasets.Open"/>).</summary>
    public string Data { get; init; } = "mnist";
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
        string? schedulerPath = DiffusersModelLoader.FindSchedulerConfig(request.StudentPath) ?? DiffusersModelLoader.FindSchedulerConfig(request.TeacherPath);
        var data = ImageDatasets.Open(request.Data, student.InChannels, student.SampleSize[0], student.SampleSize[^1]);
        ImageDatasets.RequireLabelsFor(data, student.NumClasses);
        string output = CheckOutput(request); // after every check above: it clears an earlier output when not resuming
        log?.Invoke($"distilling {student.ClassName} ({student.ParameterCount():N0} parameters) from its teacher ({teacher.ParameterCount():N0}), " +
            $"kd {request.Kd.ToString().ToLowerInvariant()}, {request.Steps} steps x {request.BatchSize} images of {data.Name}");

        var distillation = new DistillationOptions
        {
            Teacher = teacher,
            TeacherName = SourceIdentity.Describe(request.TeacherPath),
            Kd = request.Kd,
            TaskWeight = request.TaskWeight,
            OutputWeight = request.OutputWeight,
            FeatureWeight = request.FeatureWeight,
            TeacherImagesSeen = TeacherImagesSeen(request.TeacherPath),
        };
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

    /// <summary>
    /// Refuses, before any work, an output that would lose something: a non-empty folder that is not an earlier model
    /// output, or --resume without a checkpoint. Without --resume an earlier output is started afresh. Returns the folder.
    /// </summary>
    public static string CheckOutput(DistillRequest request)
    {
        string full = AtomicFolder.Check(request.OutputPath, "the distilled model",
            folder => File.Exists(Path.Combine(folder, ModelFolder.Config)) || Directory.Exists(Path.Combine(folder, DiffusionTrainer.CheckpointFolder)));
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
        string folder = DiffusersModelLoader.ResolveModelFolder(studentPath);
        foreach (var name in new[] { ModelFolder.PruneReport, ModelFolder.PrunePlan })
        {
            string source = Path.Combine(folder, name);
            if (File.Exists(source)) AtomicFile.Replace(Path.Combine(output, name), File.ReadAllBytes(source));
        }
    }
}
