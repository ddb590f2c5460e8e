using System.Security.Cryptography;
using System.Text.Json.Nodes;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using DiffusionPrune.Tests.Cli;
using DiffusionPrune.Tests.Pipeline;
using DiffusionPrune.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Training;

/// <summary>Data-free distillation of a pruned Stable Diffusion pipeline (sd-pipeline-small pruned by magnitude) from its teacher pipeline.</summary>
[Collection(TrainerTests.Collection)]
public class PipelineDistillationTests
{
    private static readonly string[] Prompts = ["a red cube on a table", "a lighthouse by the sea"];

    /// <summary>A copy of the fixture pipeline (the teacher) and the pipeline magnitude pruning removed 20% of its U-Net from (the student).</summary>
    private static (string teacher, string student) TeacherAndStudent(TempFolder temp)
    {
        string teacher = StableDiffusionPipelineTests.CopyPipeline(temp);
        string student = temp.File("pruned");
        PruneRunner.Run(new PruneRequest { ModelPath = teacher, Method = "magnitude", TargetParams = 0.2, OutputPath = student }, CPU);
        return (teacher, student);
    }

    /// <summary>Every file under <paramref name="folder"/> with its SHA-256, to prove a run left it as it was.</summary>
    private static Dictionary<string, string> Snapshot(string folder) =>
        Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories).ToDictionary(
            f => Path.GetRelativePath(folder, f), f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(f))), StringComparer.Ordinal);

    /// <summary>Mean squared error between student and teacher predictions on fixed noisy latents under the prompts' states.</summary>
    private static double OutputGap(DiffusionModel student, DiffusionModel teacher, Tensor states)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var generator = new Generator(777);
        var sample = randn([states.shape[0], 4, 16, 16], generator: generator);
        var t = randint(0, 1000, [states.shape[0]], ScalarType.Int64, generator: generator);
        var conditioning = new Conditioning(t, EncoderHiddenStates: states);
        return nn.functional.mse_loss(student.Predict(sample, conditioning), teacher.Predict(sample, conditioning)).item<float>();
    }

    private static DistillRequest Request(string student, string teacher, string output) => new()
    {
        StudentPath = student, TeacherPath = teacher, OutputPath = output, Prompts = Prompts, Steps = 20, BatchSize = 4, LearningRate = 5e-4,
        EmaDecay = 0.5, WarmupSteps = 2, TaskWeight = 0, CheckpointEvery = 100, Seed = 5, TeacherSamplesPerPrompt = 2, TeacherSampleSteps = 3,
    };

    [Fact]
    public void A_pruned_pipeline_distils_into_a_pipeline_copy_that_loads_samples_keeps_the_students_structure_and_leaves_its_sources_unchanged()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        var teacherFiles = Snapshot(teacherPath);
        var studentFiles = Snapshot(studentPath);
        using var teacher = ModelFamilies.Load(teacherPath);
        using var student = ModelFamilies.Load(studentPath);
        using var states = StableDiffusionPipeline.EncodePromptsOf(teacherPath, Prompts, classifierFreeGuidance: false);
        double gapBefore = OutputGap(student, teacher, states.PromptEmbeds);

        string output = temp.File("distilled");
        var kd = new List<double>();
        var result = DistillRunner.Run(Request(studentPath, teacherPath, output), student, teacher, p => kd.Add(p.Terms!["output"] + p.Terms["feature"]));

        Assert.Equal(20, result.Steps);
        Assert.Equal(20, kd.Count);
        Assert.True(kd.Skip(15).Average() < 0.7 * kd.Take(5).Average(), $"KD loss by step: {string.Join(", ", kd.Select(k => k.ToString("E2")))}");
        Assert.Equal(teacherFiles, Snapshot(teacherPath));
        Assert.Equal(studentFiles, Snapshot(studentPath));

        // The output is a pipeline whose unet/ is the distilled student: the student's structure, closer to the teacher.
        using (var distilled = ModelFamilies.Load(output))
        {
            Assert.Equal(student.ParameterCount(), distilled.ParameterCount());
            var shapes = student.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape, StringComparer.Ordinal);
            foreach (var (name, value) in distilled.state_dict()) Assert.Equal(shapes[name], value.shape);
            double gapAfter = OutputGap(distilled, teacher, states.PromptEmbeds);
            Assert.True(gapAfter < gapBefore, $"output gap {gapBefore:E3} -> {gapAfter:E3}");
        }
        using (var pipeline = StableDiffusionPipeline.Load(output))
        using (var image = pipeline.Generate("a cat", null, 1, 3, new SampleOptions(2, 7.5)))
            Assert.True(image.Image01.isfinite().all().item<bool>());

        // The recipe says how it was distilled; the student's prune report is at the root, beside the checkpoint.
        var recipe = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.TrainingArgs)))!["distillation"]!;
        Assert.Equal("normalized", (string?)recipe["kd"]);
        Assert.Equal("teacher_samples", (string?)recipe["data_free"]!["kind"]);
        Assert.Equal(Prompts, recipe["data_free"]!["prompts"]!.AsArray().Select(p => (string)p!).ToArray());
        Assert.True(File.Exists(Path.Combine(output, ModelFolder.PruneReport)));
        Assert.True(File.Exists(Path.Combine(output, DiffusionTrainer.CheckpointFolder, "state.json")));
        Assert.False(File.Exists(Path.Combine(output, "unet", ModelFolder.SchedulerConfig))); // unet/ stays a plain component folder
        Assert.Equal(File.ReadAllBytes(Path.Combine(teacherPath, "text_encoder", "model.safetensors")),
            File.ReadAllBytes(Path.Combine(output, "text_encoder", "model.safetensors")));
    }

    [Fact]
    public void A_pipeline_distillation_is_the_same_run_at_the_same_seed()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        using var teacher = ModelFamilies.Load(teacherPath);
        using var student = ModelFamilies.Load(studentPath);
        var first = new List<double>();
        var second = new List<double>();
        DistillRunner.Run(Request(studentPath, teacherPath, temp.File("a")) with { Steps = 4 }, student, teacher, p => first.Add(p.Loss));
        DistillRunner.Run(Request(studentPath, teacherPath, temp.File("b")) with { Steps = 4 }, student, teacher, p => second.Add(p.Loss));
        Assert.Equal(first, second);
    }

    [Fact]
    public void A_teacher_that_is_not_a_pipeline_mismatched_text_encoders_data_and_unet_folders_alone_are_refused_and_nothing_is_written()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        using var teacher = ModelFamilies.Load(teacherPath);
        using var student = ModelFamilies.Load(studentPath);
        string output = temp.File("out");
        var request = Request(studentPath, teacherPath, output);

        var e = Assert.Throws<ArgumentException>(() => DistillRunner.Run(request with { TeacherPath = Path.Combine(teacherPath, "unet") }, student, teacher));
        Assert.Contains("is a Stable Diffusion pipeline but the teacher", e.Message);
        e = Assert.Throws<ArgumentException>(() => DistillRunner.Run(request with { StudentPath = Path.Combine(studentPath, "unet") }, student, teacher));
        Assert.Contains("is a Stable Diffusion pipeline but the student", e.Message);
        e = Assert.Throws<ArgumentException>(() => DistillRunner.Run(request with
        {
            StudentPath = Path.Combine(studentPath, "unet"), TeacherPath = Path.Combine(teacherPath, "unet"), Prompts = null,
        }, student, teacher));
        Assert.Contains("give the Stable Diffusion pipeline folders", e.Message);
        e = Assert.Throws<ArgumentException>(() => DistillRunner.Run(request with { Data = "mnist" }, student, teacher));
        Assert.Contains("--data is for image models", e.Message);

        // Another text encoder: the same pipeline with its text encoder's weights changed.
        string other = temp.File("other-teacher");
        foreach (var file in Directory.EnumerateFiles(teacherPath, "*", SearchOption.AllDirectories))
        {
            string destination = Path.Combine(other, Path.GetRelativePath(teacherPath, file));
            Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
            File.Copy(file, destination);
        }
        string encoderWeights = Path.Combine(other, "text_encoder", "model.safetensors");
        var weights = DiffusersModelLoader.ReadSafetensors(encoderWeights);
        foreach (var w in weights.Values) w.mul_(1.01);
        SafetensorsWriter.Write(encoderWeights, weights);
        e = Assert.Throws<ArgumentException>(() => DistillRunner.Run(request with { TeacherPath = other }, student, teacher));
        Assert.Contains("text encoder differs from the teacher's (text_encoder/model.safetensors)", e.Message);

        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void Dprune_distill_of_a_pruned_pipeline_with_a_prompts_file_writes_a_pipeline_that_samples_and_refuses_prompts_for_a_model()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        File.WriteAllLines(temp.File("prompts.txt"), ["a red cube on a table", "", "a lighthouse by the sea"]);
        string output = temp.File("distilled");

        var (code, stdout, stderr) = CliTests.Dprune("distill", "--student", studentPath, "--teacher", teacherPath, "--prompts", temp.File("prompts.txt"),
            "--kd", "plain", "--steps", "3", "--batch", "2", "--teacher-samples", "1", "--teacher-steps", "2", "--output", output, "--json");

        Assert.True(code == 0, stderr);
        Assert.Equal(3, (int)JsonNode.Parse(stdout)!["steps"]!);
        var recipe = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.TrainingArgs)))!["distillation"]!;
        Assert.Equal("plain", (string?)recipe["kd"]);
        Assert.Equal(["a red cube on a table", "a lighthouse by the sea"], recipe["data_free"]!["prompts"]!.AsArray().Select(p => (string)p!).ToArray());
        (code, _, stderr) = CliTests.Dprune("sample", "--model", output, "--prompt", "a cat", "--steps", "2", "--seed", "1", "--output", temp.File("cat.png"));
        Assert.True(code == 0, stderr);
        Assert.True(new FileInfo(temp.File("cat.png")).Length > 0);

        string model = PruneCliTests.TinyModel(temp);
        (code, _, stderr) = CliTests.Dprune("distill", "--student", model, "--teacher", model, "--prompts", temp.File("prompts.txt"), "--steps", "1",
            "--output", temp.File("refused"));
        Assert.Equal(2, code);
        Assert.Contains("--prompts is for distilling a Stable Diffusion pipeline", stderr);
        Assert.False(Directory.Exists(temp.File("refused")));
    }
}
