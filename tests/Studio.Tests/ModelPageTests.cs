using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Jobs;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using ModelPage = DiffusionPrune.Studio.Components.Pages.Models.ModelPage;

namespace DiffusionPrune.Studio.Tests;

/// <summary>A model's page: its configuration and cost per block, its evaluations, and a seeded sample grid on demand.</summary>
public sealed class ModelPageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly JobStateService _state = new();
    private readonly long _parameters;

    public ModelPageTests()
    {
        _parameters = TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny"));
        File.WriteAllText(Path.Combine(_samples.ModelsRoot, "tiny", "eval_report.json"),
            """{"fid_proxy": {"value": 123.45, "lower": 110.5, "upper": 140.25}, "kid": {"mean": 0.0123}, "samples": 64, "steps": 10, "ssim_to_reference": 0.812}""");
        _samples.AddModel("broken", """{"_class_name": "UNet2DModel", "sample_size": 32, "block_out_channels": [8, 16]}""", 16);
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
        Context.Services.AddSingleton(_state);
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
    }

    public void Dispose() => _samples.Dispose();

    [Fact]
    public void Shows_the_configuration_the_cost_chart_and_the_evaluation()
    {
        var page = Context.Render<ModelPage>(p => p.Add(x => x.Name, "tiny"));
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".summary-table")), WaitTimeout);
        var summary = page.Find(".summary-table").TextContent;
        Assert.Contains(_parameters.ToString("N0", System.Globalization.CultureInfo.InvariantCulture), summary);
        Assert.Contains("1 x 32 x 32", summary);
        Assert.Contains("MACs per image", summary);
        Assert.Equal(2, page.FindAll(".block-chart img").Count);
        Assert.StartsWith("data:image/png;base64,", page.Find(".block-chart img").GetAttribute("src"));
        var evaluations = page.Find(".model-evaluations").TextContent;
        Assert.Contains("123.45 [110.50, 140.25] (64 images, 10 steps, recorded with the model)", evaluations);
        Assert.Contains("0.812", evaluations);
        Assert.Contains("sampled intorch", evaluations); // a report without a runtime was TorchSharp's
        Assert.Equal("prune?model=tiny", page.Find("a.prune-model").GetAttribute("href"));
        Assert.Empty(page.FindAll(".guidance-field")); // unconditional: no guidance to set
    }

    [Fact]
    public void Evaluate_queues_an_onnx_runtime_evaluation_and_the_studios_latest_report_is_shown_with_its_runtime_and_step_time()
    {
        string folder = ModelEvaluations.FolderOf(Path.Combine(_samples.Root, "out"), "tiny");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "eval-20261203-101010-000.json"), """
            {"fid_proxy": {"value": 98.7, "lower": 90.1, "upper": 107.3}, "kid": {"mean": 0.0101, "std": 0.002}, "samples": 256, "steps": 25,
             "precision": 0.61, "recall": 0.52, "runtime": "onnx (CPU)", "sampler_ms_per_step": 12.5, "batch_size": 100}
            """);
        var page = Context.Render<ModelPage>(p => p.Add(x => x.Name, "tiny"));
        page.WaitForAssertion(() => Assert.Contains("98.70 [90.10, 107.30] (256 images, 25 steps, in the Studio)", page.Find(".model-evaluations").TextContent), WaitTimeout);
        string text = page.Find(".model-evaluations").TextContent;
        Assert.Contains("onnx (CPU): 12.5 ms per step at batch 100", text);
        Assert.Contains("0.610 / 0.520", text);

        page.Find(".eval-samples-field input").Change("32");
        page.Find("button.start-evaluate").Click();
        var queue = (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        page.WaitForAssertion(() => Assert.Single(queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<EvaluateJob>(queue.Enqueued[0]);
        Assert.Equal(32, job.Request.Samples);
        Assert.Equal(25, job.Request.Steps);
        Assert.Null(job.Request.ReferenceModelPath);
        Assert.Equal(Path.Combine(_samples.Root, "out", StudioOptions.OnnxCacheFolder), job.OnnxCache); // ONNX Runtime by default
        Assert.StartsWith(Path.Combine(folder, "eval-"), job.ReportPath);
    }

    [Fact]
    public void Sample_runs_a_job_with_the_chosen_sampler_and_shows_its_grid()
    {
        var page = Context.Render<ModelPage>(p => p.Add(x => x.Name, "tiny"));
        page.WaitForAssertion(() => Assert.NotNull(page.Find("button.start-sample")), WaitTimeout);
        page.Find(".steps-field input").Change("7");
        page.WaitForAssertion(() => Assert.Equal("7", page.Find(".steps-field input").GetAttribute("value")), WaitTimeout); // the field took it
        page.Find("button.start-sample").Click();
        var queue = (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        page.WaitForAssertion(() => Assert.Single(queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<SampleJob>(queue.Enqueued[0]);
        Assert.Equal(7, job.Request.Steps);
        Assert.Equal("ddim", job.Request.SchedulerName);
        Assert.EndsWith(".png", job.Request.OutputPath);
        Assert.StartsWith(Path.Combine(_samples.Root, "out", "samples", "tiny-"), job.Request.OutputPath);
        Assert.Equal(Path.Combine(_samples.Root, "out", "onnx-cache"), job.OnnxCache); // ONNX Runtime by default

        _state.MarkRunning(job.Id);
        _state.ReportProgress(job.Id, new DiffusionPrune.Studio.Jobs.JobProgress(0.5, "step 3/7"));
        _state.ReportProgress(job.Id, new DiffusionPrune.Studio.Jobs.JobProgress(1, "grid", Preview: new DiffusionPrune.Pipeline.PreviewImage([1, 2, 3], 4, 4, "16 samples, 7 steps, seed 0"), Note: true));
        _state.MarkSucceeded(job.Id);
        page.WaitForAssertion(() => Assert.Equal("data:image/png;base64,AQID", page.Find("img.sample-grid").GetAttribute("src")), WaitTimeout);
        Assert.Contains("7 steps", page.Markup);
    }

    [Theory]
    [InlineData("broken", ".model-problem")]
    [InlineData("nothing", ".unknown-model")]
    public void A_model_that_does_not_load_or_does_not_exist_says_so(string name, string selector)
    {
        var page = Context.Render<ModelPage>(p => p.Add(x => x.Name, name));
        page.WaitForAssertion(() => Assert.NotNull(page.Find(selector)), WaitTimeout);
        Assert.Empty(page.FindAll("button.start-sample"));
    }
}

/// <summary>A sample job over the JSON API, run for real, and its grid served.</summary>
public sealed class SampleApiTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public async Task A_sample_job_writes_a_grid_the_api_serves()
    {
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny"));
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();
        Task<HttpResponseMessage> Post(string json) => client.PostAsync("/api/jobs", new StringContent(json, Encoding.UTF8, "application/json"));
        foreach (var (body, expected) in new[]
        {
            ("""{"kind": "sample", "model": "tiny", "scheduler": "heun"}""", "'scheduler' must be one of"),
            ("""{"kind": "sample", "model": "tiny", "count": 65}""", "'count' must be at most 64"),
            ("""{"kind": "sample", "model": "tiny", "guidance": 0.5}""", "'guidance' must be between 1 and 20"),
        })
            await TestModels.AssertRefusedAsync(client, body, expected);

        var job = await TestModels.RunJobAsync(client, """{"kind": "sample", "model": "tiny", "scheduler": "dpm++2m", "steps": 3, "count": 4, "seed": 5}""", TimeSpan.FromMinutes(5));
        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        Assert.Contains("on onnx (CPU)", (string)job["result"]!["summary"]!); // ONNX Runtime by default, from a cached bundle
        Assert.Contains("ms per step", (string)job["result"]!["summary"]!);
        Assert.Single(Directory.GetDirectories(Path.Combine(_samples.Root, "out", "onnx-cache")));
        string image = (string)job["result"]!["image"]!;
        var png = await client.GetAsync(image);
        Assert.Equal(HttpStatusCode.OK, png.StatusCode);
        Assert.Equal("image/png", png.Content.Headers.ContentType?.MediaType);
        var bytes = await png.Content.ReadAsByteArrayAsync();
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], bytes[..4]);
        foreach (var path in new[] { "/api/samples/nothing.png", "/api/samples/..%2Fdata%2Fjobs.db", "/api/samples/x.txt" })
            Assert.True((await client.GetAsync(path)).StatusCode == HttpStatusCode.NotFound, path);

        // TorchSharp on request: the same seed gives the same picture up to float error
        job = await TestModels.RunJobAsync(client, """{"kind": "sample", "model": "tiny", "scheduler": "dpm++2m", "steps": 3, "count": 4, "seed": 5, "runtime": "torch"}""", TimeSpan.FromMinutes(5));
        Assert.Contains("on torch (cpu)", (string)job["result"]!["summary"]!);
        using var onnxImage = SixLabors.ImageSharp.Image.Load<SixLabors.ImageSharp.PixelFormats.L8>(bytes);
        using var torchImage = SixLabors.ImageSharp.Image.Load<SixLabors.ImageSharp.PixelFormats.L8>(await client.GetByteArrayAsync((string)job["result"]!["image"]!));
        Assert.Equal(onnxImage.Width, torchImage.Width);
        int worst = 0;
        for (int y = 0; y < onnxImage.Height; y++)
            for (int x = 0; x < onnxImage.Width; x++)
                worst = Math.Max(worst, Math.Abs(onnxImage[x, y].PackedValue - torchImage[x, y].PackedValue));
        Assert.True(worst <= 2, $"the runtimes differ by {worst} grey levels");
        Assert.Equal(HttpStatusCode.BadRequest, (await Post("""{"kind": "sample", "model": "tiny", "runtime": "tensorrt"}""")).StatusCode);
    }
}

/// <summary>An evaluate job over the JSON API, run for real: its figures come back in the job's result.</summary>
public sealed class EvaluateApiTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public async Task An_evaluate_job_returns_its_figures_and_writes_no_file_into_the_model()
    {
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny"));
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "other"));
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();
        Task<HttpResponseMessage> Post(string json) => client.PostAsync("/api/jobs", new StringContent(json, Encoding.UTF8, "application/json"));
        var refused = await Post("""{"kind": "evaluate", "model": "tiny", "reference": "tiny"}""");
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains("another model", (string)JsonNode.Parse(await refused.Content.ReadAsStringAsync())!["detail"]!);

        var job = await TestModels.RunJobAsync(client, """{"kind": "evaluate", "model": "tiny", "reference": "other", "samples": 6, "steps": 2}""", TimeSpan.FromMinutes(5));
        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        Assert.Equal("evaluate", (string?)job["kind"]);
        var report = job["result"]!["report"]!;
        // ONNX Runtime by default, from bundles exported on the fly; the runtime and the time per step are in the figures
        Assert.Equal("onnx (CPU)", (string?)report["runtime"]);
        Assert.Equal(6, (int)report["batch_size"]!);
        Assert.True((double)report["sampler_ms_per_step"]! > 0);
        Assert.Matches(@"on onnx \(CPU\): \d+\.\d ms per step at batch 6\)", (string?)job["result"]!["summary"]);
        Assert.True(Directory.Exists(Path.Combine(_samples.Root, "out", StudioOptions.OnnxCacheFolder)));
        Assert.Equal(6, (int)report["samples"]!);
        double fid = (double)report["fid_proxy"]!["value"]!;
        Assert.True((double)report["fid_proxy"]!["lower"]! <= fid && fid <= (double)report["fid_proxy"]!["upper"]!);
        Assert.InRange((double)report["ssim_to_reference"]!, -1, 1);
        Assert.DoesNotContain(_samples.Root, report.ToJsonString()); // a name and hash, no local path
        Assert.False(File.Exists(Path.Combine(_samples.ModelsRoot, "tiny", "eval_report.json")));

        // TorchSharp on request, with the same noise: the same figures within float error
        var torch = await TestModels.RunJobAsync(client, """{"kind": "evaluate", "model": "tiny", "reference": "other", "samples": 6, "steps": 2, "runtime": "torch"}""", TimeSpan.FromMinutes(5));
        Assert.True((string?)torch["status"] == "succeeded", torch.ToJsonString());
        var torchReport = torch["result"]!["report"]!;
        Assert.StartsWith("torch", (string?)torchReport["runtime"]);
        Assert.Equal((double)report["ssim_to_reference"]!, (double)torchReport["ssim_to_reference"]!, 1e-4);
        Assert.InRange(Math.Abs((double)torchReport["fid_proxy"]!["value"]! - fid) / fid, 0, 1e-4); // an untrained model: FID-proxy in the 10,000s
        var bad = await Post("""{"kind": "evaluate", "model": "tiny", "runtime": "tensorflow"}""");
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
    }
}
