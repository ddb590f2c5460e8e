using System.Text.Json.Nodes;
using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pruning;
using DiffusionPrune.Tests.Cli;
using DiffusionPrune.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Training;

[Collection(TrainerTests.Collection)]
public class DistillationTests
{
    private const string TinyUNet = TrainerTests.TinyUNet;

    private const string TinyDiT = """
        {"_class_name": "DiTTransformer2DModel", "sample_size": 32, "in_channels": 1, "out_channels": 1, "patch_size": 8,
         "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 3, "num_embeds_ada_norm": 10}
        """;

    /// <summary>A teacher folder (a tiny U-Net with the fixture's scheduler) and a magnitude-pruned student folder.</summary>
    private static (string teacher, string student) TeacherAndStudent(TempFolder temp, double target = 0.3)
    {
        manual_seed(21);
        using var model = ModelFamilies.Create(ConfigJson.Parse(TinyUNet));
        string teacher = temp.File("teacher");
        DiffusersModelLoader.Save(model, teacher);
        File.Copy(Fixtures.Diffusers("unet2d-small", "scheduler_config.json"), Path.Combine(teacher, ModelFolder.SchedulerConfig));
        string student = temp.File("student");
        PruneRunner.Run(new PruneRequest { ModelPath = teacher, Method = "magnitude", TargetParams = target, OutputPath = student }, CPU);
        return (teacher, student);
    }

    private static Dictionary<string, long[]> Features(DiffusionModel model, Tensor sample, Tensor timestep, Tensor? labels = null)
    {
        var seen = new Dictionary<string, long[]>(StringComparer.Ordinal);
        model.FeatureTap = (name, feature) => seen[name] = feature.shape;
        using (no_grad()) model.Forward(sample, timestep, labels);
        model.FeatureTap = null;
        return seen;
    }

    /// <summary>Mean squared error between the student's and the teacher's predictions on fixed held-out inputs.</summary>
    private static double OutputGap(DiffusionModel student, DiffusionModel teacher)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var generator = new Generator(777);
        var sample = randn([16, 1, 32, 32], generator: generator);
        var t = randint(0, 1000, [16], ScalarType.Int64, generator: generator);
        return nn.functional.mse_loss(student.Predict(sample, t), teacher.Predict(sample, t)).item<float>();
    }

    [Fact]
    public void Block_outputs_are_tapped_by_name_and_a_pruned_student_matches_its_teacher_name_for_name()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        using var teacher = ModelFamilies.Load(teacherPath);
        using var student = ModelFamilies.Load(studentPath);
        var x = randn([2, 1, 32, 32]);
        var t = tensor(new long[] { 10, 500 });
        var teacherFeatures = Features(teacher, x, t);
        Assert.Equal(["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"], teacherFeatures.Keys.Order(StringComparer.Ordinal));
        var studentFeatures = Features(student, x, t);
        Assert.Equal(teacherFeatures.Keys.Order(), studentFeatures.Keys.Order());
        foreach (var (name, shape) in teacherFeatures) Assert.Equal(shape, studentFeatures[name]);

        // A DiT reports each transformer block; one removed by pruning reports nothing.
        manual_seed(3);
        using var dit = ModelFamilies.Create(ConfigJson.Parse(TinyDiT));
        var structure = new ModelStructure();
        structure.RemovedLayers.Add("transformer_blocks.1");
        using var shallow = ModelFamilies.Of(dit).WithStructure(dit, structure);
        var labels = tensor(new long[] { 1, 2 });
        Assert.Equal(["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"], Features(dit, x, t, labels).Keys.Order(StringComparer.Ordinal));
        Assert.Equal(["transformer_blocks.0", "transformer_blocks.2"], Features(shallow, x, t, labels).Keys.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void A_student_equal_to_its_teacher_has_zero_output_and_feature_terms()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, _) = TeacherAndStudent(temp);
        using var teacher = ModelFamilies.Load(teacherPath);
        using var student = ModelFamilies.Load(teacherPath);
        var terms = new List<IReadOnlyDictionary<string, double>>();
        DistillRunner.Run(new DistillRequest
        {
            StudentPath = teacherPath, TeacherPath = teacherPath, OutputPath = temp.File("same"), Steps = 1, BatchSize = 4, CheckpointEvery = 10,
        }, student, teacher, p => terms.Add(p.Terms!));
        Assert.Equal(0.0, terms[0]["output"]);
        Assert.Equal(0.0, terms[0]["feature"]);
        Assert.True(terms[0]["task"] > 0);
    }

    [Theory]
    [InlineData(KnowledgeDistillation.Normalized)]
    [InlineData(KnowledgeDistillation.Plain)]
    public void Distillation_brings_a_pruned_student_closer_to_its_teacher_and_leaves_the_student_it_was_given_unchanged(KnowledgeDistillation kd)
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp, target: 0.4);
        using var teacher = ModelFamilies.Load(teacherPath);
        using var student = ModelFamilies.Load(studentPath);
        var before = student.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone(), StringComparer.Ordinal);
        double gapBefore = OutputGap(student, teacher);
        string output = temp.File("distilled");
        var result = DistillRunner.Run(new DistillRequest
        {
            StudentPath = studentPath, TeacherPath = teacherPath, OutputPath = output, Kd = kd, Steps = 40, BatchSize = 8,
            LearningRate = 2e-3, EmaDecay = 0.9, TaskWeight = 0, CheckpointEvery = 100, Seed = 4,
        }, student, teacher);
        Assert.Equal(40, result.Steps);
        foreach (var (name, value) in student.state_dict()) Assert.True(value.equal(before[name]).all().item<bool>(), $"{name} changed"); // a copy trained

        using var distilled = ModelFamilies.Load(output);
        Assert.Equal(student.ParameterCount(), distilled.ParameterCount());
        double gapAfter = OutputGap(distilled, teacher);
        Assert.True(gapAfter < 0.5 * gapBefore, $"{kd}: output gap {gapBefore:E3} -> {gapAfter:E3}");
        // The recipe, and the student's prune report carried over.
        var args = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.TrainingArgs)))!["distillation"]!;
        Assert.Equal(kd.ToString().ToLowerInvariant(), args["kd"]!.GetValue<string>());
        Assert.StartsWith("teacher (weights sha256 ", args["teacher"]!.GetValue<string>());
        Assert.Equal(320, args["images_seen"]!.GetValue<long>());
        Assert.True(File.Exists(Path.Combine(output, ModelFolder.PruneReport)));
        Assert.Equal(File.ReadAllText(Path.Combine(teacherPath, ModelFolder.SchedulerConfig)), File.ReadAllText(Path.Combine(output, ModelFolder.SchedulerConfig)));
    }

    [Fact]
    public void A_distillation_cancelled_mid_way_and_resumed_equals_an_uninterrupted_run_and_releases_no_model_until_done()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        using var teacher = ModelFamilies.Load(teacherPath);
        using var student = ModelFamilies.Load(studentPath);
        DistillRequest Request(string output, bool resume = false) => new()
        {
            StudentPath = studentPath, TeacherPath = teacherPath, OutputPath = output, Steps = 6, BatchSize = 4, CheckpointEvery = 2, Seed = 9,
            LearningRate = 1e-3, Resume = resume,
        };
        string straight = temp.File("straight");
        DistillRunner.Run(Request(straight), student, teacher);

        string resumed = temp.File("resumed");
        using var cancel = new CancellationTokenSource();
        Assert.Throws<OperationCanceledException>(() => DistillRunner.Run(Request(resumed), student, teacher, p => { if (p.Step == 3) cancel.Cancel(); }, cancel: cancel.Token));
        Assert.False(File.Exists(Path.Combine(resumed, ModelFolder.Config))); // only the checkpoint (step 2)
        Assert.True(File.Exists(Path.Combine(resumed, DiffusionTrainer.CheckpointFolder, "state.json")));
        var mismatch = Assert.Throws<ArgumentException>(() => DistillRunner.Run(Request(resumed, resume: true) with { Kd = KnowledgeDistillation.Plain }, student, teacher));
        Assert.Contains("--kd normalized", mismatch.Message);
        DistillRunner.Run(Request(resumed, resume: true), student, teacher);

        using var a = ModelFamilies.Load(straight);
        using var b = ModelFamilies.Load(resumed);
        var expected = a.state_dict();
        foreach (var (name, value) in b.state_dict()) Assert.True(Fixtures.RelativeError(value, expected[name]) < 1e-5, $"{name} differs after resume by {Fixtures.RelativeError(value, expected[name])}");
    }

    [Fact]
    public async Task Dprune_distill_killed_with_sigkill_resumes_with_resume_and_ends_with_the_uninterrupted_runs_weights()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        string[] common = ["distill", "--student", studentPath, "--teacher", teacherPath, "--steps", "60", "--batch", "4", "--checkpoint-every", "3",
            "--seed", "9", "--lr", "1e-3"];
        var (code, _, stderr) = CliTests.Dprune([.. common, "--output", temp.File("straight")]);
        Assert.True(code == 0, stderr);

        string output = temp.File("killed");
        string state = Path.Combine(output, DiffusionTrainer.CheckpointFolder, "state.json");
        using (var process = System.Diagnostics.Process.Start(CliTests.DprunStartInfo([.. common, "--output", output]))!)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            string? line;
            var seen = new List<string>();
            while ((line = await process.StandardError.ReadLineAsync()) is not null)
            {
                seen.Add(line);
                if (line.StartsWith("step 12/60", StringComparison.Ordinal)) break; // a log prints every 10%: 6, 12, ...; checkpoints every 3 steps
            }
            Assert.True(line is not null, string.Join("\n", seen));
            process.Kill(); // SIGKILL: no handler runs, nothing is tidied up
            await process.WaitForExitAsync();
            await stdout;
        }
        Assert.True(File.Exists(state));
        Assert.False(File.Exists(Path.Combine(output, ModelFolder.Config)), // no model released, only the checkpoint
            File.ReadAllText(state));

        (code, _, stderr) = CliTests.Dprune([.. common, "--output", output, "--resume"]);
        Assert.True(code == 0, stderr);
        using var a = ModelFamilies.Load(temp.File("straight"));
        using var b = ModelFamilies.Load(output);
        var expected = a.state_dict();
        foreach (var (name, value) in b.state_dict())
            Assert.True(Fixtures.RelativeError(value, expected[name]) < 1e-5, $"{name} differs after the killed run resumed by {Fixtures.RelativeError(value, expected[name])}");
    }

    [Fact]
    public void Outputs_that_would_lose_something_and_mismatched_models_are_refused_before_any_step()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        using var teacher = ModelFamilies.Load(teacherPath);
        using var student = ModelFamilies.Load(studentPath);
        string documents = temp.File("documents");
        Directory.CreateDirectory(documents);
        File.WriteAllText(Path.Combine(documents, "notes.txt"), "mine");
        var request = new DistillRequest { StudentPath = studentPath, TeacherPath = teacherPath, OutputPath = documents, Steps = 1, BatchSize = 2 };
        Assert.Contains("not an earlier output", Assert.Throws<ArgumentException>(() => DistillRunner.Run(request, student, teacher)).Message);
        Assert.True(File.Exists(Path.Combine(documents, "notes.txt")));
        Assert.Throws<FileNotFoundException>(() => DistillRunner.Run(request with { OutputPath = temp.File("new"), Resume = true }, student, teacher));
        Assert.Throws<ArgumentException>(() => DistillRunner.Run(request with { OutputPath = studentPath }, student, teacher));

        manual_seed(1);
        using var dit = ModelFamilies.Create(ConfigJson.Parse(TinyDiT));
        string earlier = temp.File("earlier");
        DistillRunner.Run(request with { OutputPath = earlier }, student, teacher); // an earlier output
        var e = Assert.Throws<ArgumentException>(() => DistillRunner.Run(request with { OutputPath = earlier }, student, dit));
        Assert.Contains("do not make the same samples", e.Message);
        Assert.True(File.Exists(Path.Combine(earlier, ModelFolder.Config))); // a refused run leaves the earlier output alone
    }

    [Fact]
    public async Task The_pipeline_distils_a_student_it_pruned_in_memory_and_the_bundle_card_tells_both_steps()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, _) = TeacherAndStudent(temp);
        using var pipeline = new DiffusionPipeline();
        string pruned = temp.File("pruned");
        var progress = new List<StageProgress>();
        var sink = new SynchronousProgress<StageProgress>(progress.Add);
        await pipeline.PruneAsync(new PruneRequest { ModelPath = teacherPath, Method = "random", TargetParams = 0.2, OutputPath = pruned }, sink);
        string distilled = temp.File("distilled");
        var result = await pipeline.DistillAsync(new DistillRequest
        {
            StudentPath = pruned, TeacherPath = teacherPath, OutputPath = distilled, Steps = 3, BatchSize = 4, CheckpointEvery = 10,
        }, sink);
        Assert.Equal(3, result.Steps);
        var steps = progress.Where(p => p.Stage == PipelineStage.Distill && p.Done is not null).ToList();
        Assert.Equal([1L, 2L, 3L], steps.Select(p => p.Done!.Value));
        Assert.All(steps, p => Assert.True(p.Metrics!.ContainsKey("feature_loss") && double.IsFinite(p.Metrics["loss"])));
        Assert.Single(progress, p => p.Stage == PipelineStage.Load && p.Fraction == 1); // the teacher, once; the student was in memory
        Assert.Contains(pipeline.Models, m => m.Path == distilled);

        var bundle = await pipeline.ExportAsync(new ExportRequest { ModelPath = distilled, OutputPath = temp.File("bundle"), Formats = [ExportFormat.Safetensors] });
        string card = File.ReadAllText(Path.Combine(bundle.OutputPath, ModelFolder.ModelCard));
        Assert.Contains("## Pruning", card);
        Assert.Contains("## Distillation", card);
        Assert.Contains("| normalized | teacher (weights sha256 ", card);
    }

    [Fact]
    public void The_cli_distils_and_reports_bad_arguments_in_one_line()
    {
        using var temp = Fixtures.Temp();
        var (teacherPath, studentPath) = TeacherAndStudent(temp);
        var (code, stdout, stderr) = CliTests.Dprune("distill", "--student", studentPath, "--teacher", teacherPath, "--kd", "plain", "--steps", "2",
            "--batch", "2", "--output", temp.File("out"), "--json");
        Assert.True(code == 0, stderr);
        Assert.Equal("plain", JsonNode.Parse(stdout)!["kd"]!.GetValue<string>());
        Assert.Contains("step 2/2 loss", stderr);
        Assert.True(File.Exists(Path.Combine(temp.File("out"), ModelFolder.Config)));

        (code, _, stderr) = CliTests.Dprune("distill", "--student", studentPath, "--teacher", teacherPath, "--kd", "sideways", "--steps", "2", "--output", temp.File("bad"));
        Assert.Equal(2, code);
        Assert.Equal("error: --kd must be normalized, plain or none, not 'sideways'.", stderr.Trim());
    }
}
