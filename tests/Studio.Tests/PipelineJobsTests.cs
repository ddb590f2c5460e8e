using System.IO.Compression;
using System.Text.Json.Nodes;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using DiffusionPrune.Studio.Export;
using DiffusionPrune.Studio.Jobs;
using DiffusionPrune.Training;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.Logging.Abstractions;

namespace DiffusionPrune.Studio.Tests;

/// <summary>
/// Distil, export and evaluate jobs on a Stable Diffusion pipeline (sd-pipeline-small and a copy magnitude pruning
/// removed 20% of its U-Net from): what the API refuses, and each job run for real.
/// </summary>
public sealed class PipelineJobsTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    private string Original => Path.Combine(_samples.ModelsRoot, "sd-small");

    private string Pruned => Path.Combine(_samples.Root, "out", StudioOptions.PrunedFolder, "sd-small-magnitude-20");

    /// <summary>The fixture as models/sd-small and its magnitude-pruned copy as pruned/sd-small-magnitude-20 (with its prune report naming sd-small).</summary>
    private void AddOriginalAndPruned()
    {
        TestPipelines.CopyTo(Original);
        PruneRunner.Run(new PruneRequest { ModelPath = Original, Method = "magnitude", TargetParams = 0.2, OutputPath = Pruned }, TorchSharp.torch.CPU);
    }

    /// <summary>Runs <paramref name="job"/> on a job queue of its own until it has finished; returns its snapshot.</summary>
    private static async Task<JobSnapshot> RunAsync(StudioJob job, TimeSpan timeout)
    {
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);
        await queue.EnqueueAsync(job);
        try
        {
            await TestPipelines.WaitUntilAsync(() => state.Find(job.Id)?.IsFinished == true, timeout);
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"The job did not finish in {timeout}; its log: " + string.Join(" | ", state.Find(job.Id)!.Lines.TakeLast(30)));
        }
        await queue.StopAsync(CancellationToken.None);
        var done = state.Find(job.Id)!;
        Assert.True(done.Status == JobStatus.Succeeded, done.Error);
        return done;
    }

    [Fact]
    public async Task The_api_refuses_pipeline_fields_for_models_and_a_pipeline_beside_a_model_before_queuing()
    {
        TestPipelines.CopyTo(Original);
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny"));
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny2"));
        TestPipelines.CopyTo(Path.Combine(_samples.ModelsRoot, "sd-copy"));
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();
        foreach (var (body, expected) in new[]
        {
            ("""{"kind": "distill", "student": "sd-copy", "teacher": "tiny"}""", "'teacher': sd-copy is a Stable Diffusion pipeline, so its teacher must be one too"),
            ("""{"kind": "distill", "student": "tiny", "teacher": "sd-small"}""", "'student': the teacher sd-small is a Stable Diffusion pipeline"),
            ("""{"kind": "distill", "student": "tiny", "teacher": "tiny2", "prompts": ["a cat"]}""", "distil a Stable Diffusion pipeline on its teacher's samples; tiny is a UNet2DModel"),
            ("""{"kind": "distill", "student": "tiny", "teacher": "tiny2", "teacher_steps": 3}""", "Leave them out"),
            ("""{"kind": "distill", "student": "sd-copy", "teacher": "sd-small", "teacher_samples": 65}""", "'teacher_samples'"),
            ("""{"kind": "distill", "student": "sd-copy", "teacher": "sd-small", "teacher_guidance": 31}""", "'teacher_guidance' must be from 0 to 30"),
            ("""{"kind": "distill", "student": "sd-copy", "teacher": "sd-small", "prompts": ["a cat", " "]}""", "'prompts' must be a non-empty list"),
            ("""{"kind": "distill", "student": "sd-copy", "teacher": "sd-small", "evaluate": true, "runtime": "onnx"}""", "quick look runs in TorchSharp only"),
            ("""{"kind": "export", "model": "sd-small", "formats": "safetensors,onnx"}""", "exports as an ONNX pipeline only"),
            ("""{"kind": "evaluate", "model": "sd-copy"}""", "'reference' is required"),
            ("""{"kind": "evaluate", "model": "sd-copy", "reference": "tiny"}""", "is evaluated against a pipeline; tiny is a UNet2DModel"),
            ("""{"kind": "evaluate", "model": "sd-copy", "reference": "sd-copy"}""", "another pipeline than 'model'"),
            ("""{"kind": "evaluate", "model": "sd-copy", "reference": "sd-small", "samples": 17}""", "at most 16"),
            ("""{"kind": "evaluate", "model": "sd-copy", "reference": "sd-small", "runtime": "onnx"}""", "evaluated in TorchSharp only"),
            ("""{"kind": "evaluate", "model": "tiny", "prompts": ["a cat"]}""", "'prompts' and 'guidance' are for evaluating a Stable Diffusion pipeline"),
        })
            await TestModels.AssertRefusedAsync(client, body, expected);
        Assert.False(Directory.Exists(Path.Combine(_samples.Root, "out", StudioOptions.DistilledFolder))); // nothing was started
    }

    [Fact]
    public async Task A_distil_job_recovers_a_pruned_pipeline_from_its_teacher_on_prompts_and_its_quick_look_measures_it_against_the_teacher()
    {
        AddOriginalAndPruned();
        string output = Path.Combine(_samples.Root, "out", StudioOptions.DistilledFolder, "sd-small-magnitude-20-normalized-3");
        var job = new DistillJob(new DistillRequest
        {
            StudentPath = Pruned, TeacherPath = Original, OutputPath = output, Steps = 3, BatchSize = 2, Seed = 2, CheckpointEvery = 100,
            Prompts = ["a red cube on a table", "a lighthouse by the sea"], TeacherSamplesPerPrompt = 1, TeacherSampleSteps = 2, TeacherGuidanceScale = 5,
        }, new QuickEvaluation(Steps: 2));
        // the student's own quick look, as its prune job left it: the distilled pipeline must neither show nor overwrite it
        File.WriteAllText(Path.Combine(Pruned, ModelFolder.EvalReport), """{"kind": "stable_diffusion_eval", "note": "the student's"}""");
        File.WriteAllBytes(Path.Combine(Pruned, PruneJob.QuickLookFile), [1, 2, 3]);

        var done = await RunAsync(job, TimeSpan.FromMinutes(5));

        Assert.Equal("""{"kind": "stable_diffusion_eval", "note": "the student's"}""", File.ReadAllText(Path.Combine(Pruned, ModelFolder.EvalReport)));
        Assert.Equal([1, 2, 3], File.ReadAllBytes(Path.Combine(Pruned, PruneJob.QuickLookFile)));

        Assert.Contains("distilled 3 steps of 2 latents", done.Result);
        Assert.Contains("SSIM to the teacher", done.Result);
        Assert.Contains("no FID-proxy for pipelines", done.Result);
        Assert.StartsWith($"\"{QuickEvaluation.PipelinePrompt}\" x 2, seed 2", done.Preview!.Caption); // the same-seed grid
        var recipe = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.TrainingArgs)))!["distillation"]!;
        Assert.Equal(["a red cube on a table", "a lighthouse by the sea"], recipe["data_free"]!["prompts"]!.AsArray().Select(p => (string)p!));
        using (var distilled = StableDiffusionPipeline.Load(output)) // a whole pipeline with the student's smaller U-Net
        using (var student = StableDiffusionPipeline.Load(Pruned))
            Assert.Equal(student.Unet.ParameterCount(), distilled.Unet.ParameterCount());
        var quickLook = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.EvalReport)))!;
        foreach (var figure in new[] { "ssim", "psnr_db", "latent_relative_mse" })
            Assert.True(double.IsFinite((double)quickLook[figure]!["mean"]!), $"{figure}: {quickLook[figure]}");
        Assert.StartsWith("sd-small", (string?)quickLook["reference"]);
        Assert.True(File.Exists(Path.Combine(output, PruneJob.QuickLookFile)));
    }

    [Fact]
    public async Task A_distilled_pipeline_without_a_quick_look_carries_none_of_its_students()
    {
        AddOriginalAndPruned();
        File.WriteAllText(Path.Combine(Pruned, ModelFolder.EvalReport), """{"kind": "stable_diffusion_eval"}""");
        File.WriteAllBytes(Path.Combine(Pruned, PruneJob.QuickLookFile), [1, 2, 3]);
        string output = Path.Combine(_samples.Root, "out", StudioOptions.DistilledFolder, "plain");

        await RunAsync(new DistillJob(new DistillRequest
        {
            StudentPath = Pruned, TeacherPath = Original, OutputPath = output, Steps = 1, BatchSize = 1, CheckpointEvery = 100,
            Prompts = ["a red cube"], TeacherSamplesPerPrompt = 1, TeacherSampleSteps = 1,
        }), TimeSpan.FromMinutes(5));

        Assert.True(File.Exists(Path.Combine(output, ModelFolder.PipelineIndex)));
        Assert.False(File.Exists(Path.Combine(output, ModelFolder.EvalReport)));
        Assert.False(File.Exists(Path.Combine(output, PruneJob.QuickLookFile)));
        Assert.True(File.Exists(Path.Combine(Pruned, PruneJob.QuickLookFile))); // the student's is still there
    }

    [Fact]
    public async Task An_export_job_writes_a_pipeline_as_an_onnx_pipeline_in_the_exports_folder_zipped_for_download()
    {
        AddOriginalAndPruned();
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();

        var job = await TestModels.RunJobAsync(client, """{"kind": "export", "model": "pruned/sd-small-magnitude-20"}""", TimeSpan.FromMinutes(5));

        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        Assert.Contains("as an ONNX pipeline", (string)job["name"]!);
        Assert.Contains("text_encoder, unet, vae_decoder", (string)job["result"]!["summary"]!);
        string bundle = (string)job["result"]!["bundle"]!;
        Assert.StartsWith("sd-small-magnitude-20-onnx-", bundle);
        string folder = Path.Combine(_samples.Root, "out", StudioOptions.ExportsFolder, bundle);
        foreach (var file in new[] { "model_index.json", "text_encoder/model.onnx", "unet/model.onnx", "vae_decoder/model.onnx", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "README.md" })
            Assert.True(File.Exists(Path.Combine(folder, file)), $"{file} is missing from {folder}");
        Assert.Contains("OnnxStableDiffusionPipeline", File.ReadAllText(Path.Combine(folder, "model_index.json")));

        var zip = await client.GetByteArrayAsync((string)job["result"]!["download"]!);
        using var archive = new ZipArchive(new MemoryStream(zip));
        var entries = archive.Entries.Select(e => e.FullName.Replace('\\', '/')).ToHashSet();
        foreach (var file in new[] { "model_index.json", "unet/model.onnx", "vae_decoder/model.onnx", "text_encoder/model.onnx" })
            Assert.Contains($"{bundle}/{file}", entries);
        Assert.Equal(new FileInfo(Path.Combine(folder, "unet", "model.onnx")).Length, archive.GetEntry($"{bundle}/unet/model.onnx")!.Length);
        // listed as one ONNX pipeline, as the On-device page finds such bundles
        var listed = Assert.Single(new BundleFolders(Path.Combine(_samples.Root, "out", StudioOptions.ExportsFolder)).List(), b => b.Name == bundle);
        Assert.True(listed.IsPipeline);
        Assert.Equal("OnnxStableDiffusionPipeline", listed.ClassName);

        // the ONNX pipeline runs: ONNX Runtime from a prompt, finite images
        using var onnx = OnnxStableDiffusionPipeline.Open(folder);
        using var embeddings = onnx.EncodePrompt("a cat", null, 1, classifierFreeGuidance: true);
        using var noise = onnx.DrawNoise(1, new TorchSharp.torch.Generator(1));
        using var image = onnx.Generate(embeddings, noise, new SampleOptions(2, 7.5));
        Assert.True(image.Image01.isfinite().all().item<bool>());
    }

    [Fact]
    public async Task An_evaluate_job_measures_a_pruned_pipeline_against_its_original_by_default_and_the_report_has_finite_figures()
    {
        AddOriginalAndPruned();
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();

        var job = await TestModels.RunJobAsync(client,
            """{"kind": "evaluate", "model": "pruned/sd-small-magnitude-20", "prompts": ["a red cube", "a blue sky"], "samples": 2, "steps": 2, "seed": 3}""",
            TimeSpan.FromMinutes(5));

        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        Assert.Contains("against sd-small", (string)job["name"]!);
        Assert.Contains("SSIM to sd-small", (string)job["result"]!["summary"]!);
        var report = job["result"]!["report"]!;
        Assert.Equal("stable_diffusion_eval", (string?)report["kind"]);
        Assert.Equal("pruned/sd-small-magnitude-20", (string?)report["model"]);
        Assert.Equal("sd-small", (string?)report["reference"]); // the original, from the prune report
        Assert.Equal(4, (int)report["images"]!);
        foreach (var figure in new[] { "ssim", "psnr_db", "latent_relative_mse" })
            foreach (var part in new[] { "mean", "std", "worst" })
                Assert.True(double.IsFinite((double)report[figure]![part]!), $"{figure}.{part}: {report[figure]}");
        Assert.InRange((double)report["ssim"]!["mean"]!, -1, 1);
        Assert.True(double.IsFinite((double)report["latent_statistic_shift"]!));
        Assert.InRange((double)report["unet_parameters_removed"]!, 0.15, 0.25);
        Assert.DoesNotContain(_samples.Root, report.ToJsonString()); // names, never local paths
        string grid = Path.Combine(ModelEvaluationsFolder("pruned/sd-small-magnitude-20"), (string)report["grid"]!);
        using var image = SixLabors.ImageSharp.Image.Load(grid);
        Assert.Equal((3 * 32 + 4 * 2, 4 * 32 + 5 * 2), (image.Width, image.Height)); // 4 rows (images) of reference | model | difference
    }

    [Fact]
    public void An_interrupted_pipeline_evaluation_is_rebuilt_from_its_stored_request_as_a_pipeline_evaluation()
    {
        var job = new PipelineEvaluateJob(new StableDiffusionEvalRequest
        {
            ModelPath = "/models/a", ReferencePath = "/models/b", Prompts = ["a cat", "a dog"], ImagesPerPrompt = 3, Steps = 4, GuidanceScale = 6, Seed = 9,
        }, "/out/evaluations/a/eval-1.json", "pruned/a", "b");

        var again = Assert.IsType<PipelineEvaluateJob>(StudioJobs.Resume("evaluate", job.RequestJson!, job.Id));

        Assert.Equal(job.Id, again.Id);
        Assert.Equal(("pruned/a", "b", "/out/evaluations/a/eval-1.json"), (again.ModelName, again.ReferenceName, again.ReportPath));
        Assert.Equal(["a cat", "a dog"], again.Request.Prompts);
        Assert.Equal(job.Request with { Prompts = null }, again.Request with { Prompts = null });
        Assert.Equal(job.Name, again.Name);
    }

    private string ModelEvaluationsFolder(string name) => Catalog.ModelEvaluations.FolderOf(Path.Combine(_samples.Root, "out"), name);
}
