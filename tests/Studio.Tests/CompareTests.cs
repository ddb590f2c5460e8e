using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Imaging;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Compare;
using DiffusionPrune.Studio.Jobs;
using Microsoft.AspNetCore.Components;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using ComparePage = DiffusionPrune.Studio.Components.Pages.Compare.Compare;
using CompareResultPage = DiffusionPrune.Studio.Components.Pages.Compare.CompareResult;

namespace DiffusionPrune.Studio.Tests;

/// <summary>The Compare page: choosing 2 to 6 models, the reference first, makes a compare job.</summary>
public sealed class ComparePageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly JobStateService _state = new();

    public ComparePageTests()
    {
        foreach (var name in new[] { "alpha", "beta", "gamma" })
            _samples.AddModel(name, TestModels.TinyUNetConfig(), 16);
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
        Context.Services.AddSingleton(_state);
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton(new ComparisonFolders(Path.Combine(_samples.Root, "out", "compared")));
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
    }

    public void Dispose() => _samples.Dispose();

    [Fact]
    public void Preselected_models_start_a_comparison_with_the_chosen_reference_first()
    {
        Context.Services.GetRequiredService<NavigationManager>().NavigateTo("compare?models=beta&models=gamma");
        var page = Context.Render<ComparePage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find("button.start-compare")), WaitTimeout);
        Assert.False(page.Find("button.start-compare").HasAttribute("disabled"));
        Assert.Contains("None yet", page.Find(".no-comparisons").TextContent);

        page.Find("button.start-compare").Click();
        var queue = (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        page.WaitForAssertion(() => Assert.Single(queue.Enqueued), WaitTimeout); // the button's handler may finish after Click returns
        var job = Assert.IsType<CompareJob>(Assert.Single(queue.Enqueued));
        Assert.Equal([Path.Combine(_samples.ModelsRoot, "beta"), Path.Combine(_samples.ModelsRoot, "gamma")], job.Request.ModelPaths);
        Assert.Equal(["beta", "gamma"], job.Request.Names);
        Assert.Equal(1, job.Request.LatencyBatch);
        Assert.StartsWith(Path.Combine(_samples.Root, "out", "compared", "compare-"), job.Request.OutputPath);
        page.WaitForAssertion(() => Assert.EndsWith($"jobs/{job.Id}", Context.Services.GetRequiredService<NavigationManager>().Uri), WaitTimeout);
        Assert.Equal("Compare beta, gamma", job.Name);
    }

    [Fact]
    public void A_finished_prune_job_offers_to_compare_its_output_with_the_original()
    {
        var job = new PruneJob(new DiffusionPrune.Pruning.PruneRequest
        {
            ModelPath = Path.Combine(_samples.ModelsRoot, "alpha"), Method = "magnitude", TargetParams = 0.2,
            OutputPath = Path.Combine(_samples.Root, "out", "pruned", "alpha-magnitude-20-20261203-120000-000"),
        });
        _state.Track(job);
        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.Jobs.JobDetail>(p => p.Add(x => x.Id, job.Id));
        Assert.Empty(page.FindAll(".compare-with-original")); // not before it has succeeded
        _state.MarkRunning(job.Id);
        _state.MarkSucceeded(job.Id);
        page.WaitForAssertion(() => Assert.Equal("compare?models=alpha&models=pruned%2Falpha-magnitude-20-20261203-120000-000",
            page.Find("a.compare-with-original").GetAttribute("href")), WaitTimeout);
    }

    [Fact]
    public void One_model_is_not_enough()
    {
        Context.Services.GetRequiredService<NavigationManager>().NavigateTo("compare?models=alpha");
        var page = Context.Render<ComparePage>();
        page.WaitForAssertion(() => Assert.True(page.Find("button.start-compare").HasAttribute("disabled")), WaitTimeout);
        Assert.Contains("Choose 2 to 6 models; 1 is chosen.", page.Markup);
    }
}

/// <summary>A finished comparison as its page shows it, from the files a compare job writes.</summary>
public sealed class CompareResultPageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly ComparisonFolders _folders;

    public CompareResultPageTests()
    {
        _folders = new ComparisonFolders(Path.Combine(_samples.Root, "compared"));
        Context.Services.AddSingleton(_folders);
    }

    public void Dispose() => _samples.Dispose();

    /// <summary>A comparison written as <see cref="ModelComparison"/> writes it, with made-up figures and one-pixel pictures.</summary>
    internal static string WriteComparison(string folder)
    {
        Directory.CreateDirectory(folder);
        byte[] png = PixelGrid.EncodePng([128], 1, 1, 1);
        foreach (var file in new[] { "grid-0.png", "grid-1.png", "difference-1.png", ComparisonReport.PngName, ComparisonReport.ParetoName, ComparisonReport.HeatMapName })
            File.WriteAllBytes(Path.Combine(folder, file), png);
        var latency = new LatencyResult(LatencyResult.TorchSharp, 1, 2, 10, 12.5, 11, 14);
        var report = new ComparisonReport(
        [
            new ComparedModel("mnist-unet", "UNet2DModel", "original", null, 0, 2_538_993, 126_191_616, 119.6, 110.2, 130.4, 0.0123, 0.002, 0.71, 0.91,
                null, null, null, 40, latency, latency with { Backend = LatencyResult.OnnxRuntimeCpu, MedianMs = 5.5 }, new Dictionary<string, double>(), "grid-0.png", null, null),
            new ComparedModel("mnist-unet-magnitude-20", "UNet2DModel", "magnitude", 0.2, 0.208, 2_012_017, 117_923_840, 133.9, 121.0, 147.5, 0.0201, 0.003, 0.62, 0.87,
                null, 0.788, 23.4, 35, latency, null, new Dictionary<string, double> { ["down_blocks.0.resnets.0"] = 0.75 }, "grid-1.png", "difference-1.png", 4.9, "onnx (CPU)", 64, 10),
        ], 64, 10, 0, 16, 1, ModelEvaluator.MnistReference, ModelEvaluator.FeatureSpace, "AMD EPYC (avx2)", DateTimeOffset.Parse("2026-12-03T12:00:00Z"), 190);
        report.Write(folder);
        return Path.GetFileName(folder);
    }

    [Fact]
    public void Shows_grids_quality_with_intervals_cost_and_charts_and_toggles_the_differences()
    {
        string name = WriteComparison(Path.Combine(_folders.Root, "compare-20261203-120000-000"));
        var page = Context.Render<CompareResultPage>(p => p.Add(x => x.Name, name));

        Assert.Contains("mnist-unet · mnist-unet-magnitude-20", page.Find("h1").TextContent);
        var quality = page.Find(".quality-table").TextContent;
        Assert.Contains("119.60 [110.20, 130.40]", quality);
        Assert.Contains("133.90 [121.00, 147.50]", quality);
        Assert.Contains("0.0201 ± 0.0030", quality);
        Assert.Contains("0.788", quality);
        var sampled = page.FindAll(".sampled-with").Select(c => c.TextContent).ToList();
        Assert.Equal("torch (cpu)", sampled[0]); // a report written before the step time was recorded
        Assert.Equal("onnx (CPU): 224.0 ms per step at batch 64", sampled[1]); // 35 ms per image x 64 / 10 steps
        var cost = page.Find(".cost-table").TextContent;
        Assert.Contains("2,012,017", cost);
        Assert.Contains("20.8%", cost.Replace(" ", ""));
        Assert.Contains("12.5 [11.0, 14.0]", cost);
        Assert.Contains("5.5 [11.0, 14.0]", cost);
        Assert.Contains("–", cost); // the pruned model has no ONNX figure here
        Assert.Contains("AMD EPYC (avx2)", page.Find(".comparison-settings").TextContent);

        var images = page.FindAll(".compared-grid img").Select(i => i.GetAttribute("src")).ToList();
        Assert.Equal([$"api/comparisons/{name}/grid-0.png", $"api/comparisons/{name}/grid-1.png"], images);
        Assert.NotNull(page.Find(".pareto-chart img"));
        Assert.NotNull(page.Find(".kept-heat-map img"));
        Assert.Equal($"api/comparisons/{name}/comparison.md?download=1", page.Find("a.download-markdown").GetAttribute("href"));
        Assert.Equal($"api/comparisons/{name}/comparison.png?download=1", page.Find("a.download-png").GetAttribute("href"));

        page.Find(".difference-switch input").Change(true);
        page.WaitForAssertion(() => Assert.Equal([$"api/comparisons/{name}/difference-1.png"], // the reference has no difference of its own
            page.FindAll(".compared-grid img").Select(i => i.GetAttribute("src")).ToList()), WaitTimeout);
        Assert.Contains("4.9 grey levels", page.Markup);
    }

    [Theory]
    [InlineData("nothing-here")]
    [InlineData("..")]
    [InlineData("../compared")]
    public void An_unknown_or_unsafe_name_shows_no_comparison(string name)
    {
        WriteComparison(Path.Combine(_folders.Root, "real"));
        var page = Context.Render<CompareResultPage>(p => p.Add(x => x.Name, name));
        Assert.NotNull(page.Find(".no-comparison"));
    }
}

/// <summary>A compare job over the JSON API, run for real on two tiny models, and its files served safely.</summary>
public sealed class CompareApiTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public async Task A_compare_job_runs_and_its_comparison_is_listed_and_served()
    {
        TorchSharp.torch.manual_seed(1);
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny-a"));
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny-b"));
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();

        foreach (var (body, expected) in new[]
        {
            ("""{"kind": "compare", "models": ["tiny-a"]}""", "2 to 6 models"),
            ("""{"kind": "compare", "models": ["tiny-a", "nope"]}""", "no model named 'nope'"),
            ("""{"kind": "compare", "models": ["tiny-a", "../models/tiny-b"]}""", "not a path"),
            ("""{"kind": "compare", "models": ["tiny-a", "tiny-a"]}""", "listed twice"),
            ("""{"kind": "compare", "models": "tiny-a"}""", "must be a list of names"),
            ("""{"kind": "compare", "models": ["tiny-a", "tiny-b"], "grid": 65}""", "Grid images must be between 1 and 64"),
        })
            await TestModels.AssertRefusedAsync(client, body, expected);

        var job = await TestModels.RunJobAsync(client, """{"kind": "compare", "models": ["tiny-b", "tiny-a"], "samples": 4, "steps": 2, "grid": 4, "latency_batch": 0}""", TimeSpan.FromMinutes(4));
        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        Assert.Equal("compare", (string?)job["kind"]);
        string name = (string)job["result"]!["comparison"]!;
        Assert.Equal($"/compare/{name}", (string?)job["result"]!["url"]);
        Assert.Contains("FID-proxy: tiny-b", (string)job["result"]!["summary"]!);
        // sampled in ONNX Runtime by default, from bundles exported into the comparison
        var compared = ComparisonReport.Load(Path.Combine(_samples.Root, "out", StudioOptions.ComparedFolder, name));
        Assert.All(compared.Models, m => Assert.Equal("onnx (CPU)", m.SampledWith));
        Assert.All(compared.Models, m => Assert.True(m.MillisecondsPerStep > 0));

        var listed = JsonNode.Parse(await client.GetStringAsync("/api/comparisons"))!.AsArray();
        Assert.Equal(["tiny-b", "tiny-a"], Assert.Single(listed)!["models"]!.AsArray().Select(n => (string)n!));

        var markdown = await client.GetAsync($"/api/comparisons/{name}/comparison.md?download=1");
        Assert.Equal(HttpStatusCode.OK, markdown.StatusCode);
        Assert.Equal("text/markdown", markdown.Content.Headers.ContentType?.MediaType);
        Assert.Equal($"{name}-comparison.md", markdown.Content.Headers.ContentDisposition?.FileNameStar ?? markdown.Content.Headers.ContentDisposition?.FileName);
        Assert.Contains("| tiny-a |", await markdown.Content.ReadAsStringAsync());
        var png = await client.GetAsync($"/api/comparisons/{name}/comparison.png");
        Assert.Equal("image/png", png.Content.Headers.ContentType?.MediaType);

        // nothing but a comparison's own PNG, markdown and JSON files
        foreach (var path in new[] { $"/api/comparisons/{name}/..%2F..%2Fdata%2Fjobs.db", $"/api/comparisons/..%2Fdata/jobs.db", $"/api/comparisons/{name}/bundles",
                                     $"/api/comparisons/{name}/nothing.png", $"/api/comparisons/nothing/comparison.md" })
            Assert.True((await client.GetAsync(path)).StatusCode == HttpStatusCode.NotFound, path);
    }
}
