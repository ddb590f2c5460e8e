using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Hosting;
using DiffusionPrune.Studio.Jobs;
using DiffusionPrune.Studio.Prune;
using Microsoft.AspNetCore.Components;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using MudBlazor;
using ModelPage = DiffusionPrune.Studio.Components.Pages.Models.ModelPage;
using PrunePage = DiffusionPrune.Studio.Components.Pages.Prune.Prune;

namespace DiffusionPrune.Studio.Tests;

/// <summary>The tiny Stable Diffusion pipeline the Studio tests copy: sd-pipeline-small's folder from the diffusers fixtures.</summary>
internal static class TestPipelines
{
    public static string Fixture
    {
        get
        {
            string root = RepositoryLayout.FindRoot() ?? throw new DirectoryNotFoundException("The tests run outside the repository.");
            string folder = Path.Combine(root, "tests", "fixtures", "diffusers", "sd-pipeline-small", "pipeline");
            return Directory.Exists(folder) ? folder
                : throw new DirectoryNotFoundException($"The sd-pipeline-small fixture is missing (expected {folder}); tests/fixtures/diffusers.sha256 lists every fixture.");
        }
    }

    /// <summary>Copies the fixture pipeline (every component) to <paramref name="folder"/>; returns it.</summary>
    public static string CopyTo(string folder)
    {
        foreach (var file in Directory.EnumerateFiles(Fixture, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(folder, Path.GetRelativePath(Fixture, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        return folder;
    }

    /// <summary>The size of every safetensors file under <paramref name="folder"/>.</summary>
    public static long SafetensorsBytes(string folder) =>
        Directory.EnumerateFiles(folder, "*.safetensors", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);

    public static async Task WaitUntilAsync(Func<bool> condition, TimeSpan timeout)
    {
        using var cancel = new CancellationTokenSource(timeout);
        while (!condition())
            await Task.Delay(50, cancel.Token);
    }
}

/// <summary>A Stable Diffusion pipeline folder in the catalog: one model wherever model folders are listed, and a broken one with its problem.</summary>
public sealed class PipelineCatalogTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public async Task A_pipeline_folder_is_listed_once_as_a_StableDiffusionPipeline_sized_by_all_its_components_in_every_root()
    {
        string inModels = TestPipelines.CopyTo(Path.Combine(_samples.ModelsRoot, "sd-small"));
        string outputs = Path.Combine(_samples.Root, "out", "pruned");
        TestPipelines.CopyTo(Path.Combine(outputs, "sd-copy"));
        string userRoot = Path.Combine(_samples.Root, "user-models");
        TestPipelines.CopyTo(Path.Combine(userRoot, "sd-user"));
        string linkable = TestPipelines.CopyTo(Path.Combine(userRoot, "deeper", "sd-linked"));
        var links = new ModelLinks([userRoot], Path.Combine(_samples.Root, "links.json"));
        Assert.Equal("linked/sd-link", await links.AddAsync(linkable, "sd-link")); // the strict loader took every component
        var catalog = new FileSystemModelCatalog(_samples.Root, [outputs], links.List, [userRoot]);

        var models = await catalog.ListModelsAsync();

        Assert.Equal(["sd-small", "pruned/sd-copy", "user-models/deeper", "user-models/sd-user", "linked/sd-link"], models.Select(m => m.Name).ToList());
        long expected = TestPipelines.SafetensorsBytes(inModels);
        Assert.True(expected > 1_000_000, $"the fixture's weights are {expected} bytes");
        foreach (var model in models.Where(m => m.Name != "user-models/deeper"))
        {
            Assert.True(model.Problem is null, $"{model.Name}: {model.Problem}");
            Assert.Equal(StableDiffusionPipeline.ClassName, model.ClassName);
            Assert.True(model.IsPipeline);
            Assert.Equal(expected, model.SafetensorsBytes); // text encoder + U-Net + VAE, not the root's nothing
        }
        // a folder that only holds a pipeline further down is not one: it is listed with the usual problem
        Assert.Contains("config.json is missing", models.Single(m => m.Name == "user-models/deeper").Problem);
    }

    [Theory]
    [InlineData("no-unet", "has no unet/ subfolder")]
    [InlineData("bad-json", "is not valid JSON")]
    [InlineData("sdxl", "only StableDiffusionPipeline folders")]
    [InlineData("no-vae-weights", "No .safetensors file in")]
    [InlineData("wrong-class", "\"unet\" is a UNet2DModel")]
    public async Task A_broken_pipeline_folder_is_listed_with_what_is_wrong_and_its_page_says_so(string breakage, string expected)
    {
        string folder = TestPipelines.CopyTo(Path.Combine(_samples.ModelsRoot, "broken"));
        string index = Path.Combine(folder, ModelFolder.PipelineIndex);
        switch (breakage)
        {
            case "no-unet": Directory.Delete(Path.Combine(folder, "unet"), recursive: true); break;
            case "bad-json": File.WriteAllText(index, "{ \"_class_name\": \"StableDiffusionPipeline\", "); break;
            case "sdxl": File.WriteAllText(index, File.ReadAllText(index).Replace("\"StableDiffusionPipeline\"", "\"StableDiffusionXLPipeline\"")); break;
            case "no-vae-weights": File.Delete(Path.Combine(folder, "vae", "diffusion_pytorch_model.safetensors")); break;
            case "wrong-class": File.WriteAllText(index, File.ReadAllText(index).Replace("\"UNet2DConditionModel\"", "\"UNet2DModel\"")); break;
        }

        var model = Assert.Single(await new FileSystemModelCatalog(_samples.Root).ListModelsAsync());

        Assert.Equal("broken", model.Name);
        Assert.NotNull(model.Problem);
        Assert.Contains(expected, model.Problem);
    }
}

/// <summary>A pipeline's model page: its components instead of a failure, and a prompt box that samples for real.</summary>
public sealed class PipelineModelPageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly JobStateService _state = new();
    private readonly ChannelJobQueue _queue;

    public PipelineModelPageTests()
    {
        TestPipelines.CopyTo(Path.Combine(_samples.ModelsRoot, "sd-small"));
        _queue = new ChannelJobQueue(_state, NullLogger<ChannelJobQueue>.Instance);
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
        Context.Services.AddSingleton(_state);
        Context.Services.AddSingleton<IJobQueue>(_queue);
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
    }

    public override async Task DisposeAsync()
    {
        await _queue.StopAsync(CancellationToken.None);
        _queue.Dispose();
        await base.DisposeAsync();
    }

    public void Dispose() => _samples.Dispose();

    [Fact]
    public void Shows_each_component_with_its_class_and_parameters_and_a_prompt_box_with_diffusers_defaults()
    {
        using var pipeline = StableDiffusionPipeline.Load(Path.Combine(_samples.ModelsRoot, "sd-small"));
        var page = Context.Render<ModelPage>(p => p.Add(x => x.Name, "sd-small"));
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".components-table")), WaitTimeout);

        var inv = System.Globalization.CultureInfo.InvariantCulture;
        string Row(string name) => page.Find($"tr.component-{name}").TextContent;
        Assert.Contains("CLIPTokenizer", Row("tokenizer"));
        Assert.Contains("49,408 tokens", Row("tokenizer"));
        Assert.Contains("CLIPTextModel", Row("text_encoder"));
        Assert.Contains(pipeline.TextEncoder.parameters().Sum(p => p.numel()).ToString("N0", inv), Row("text_encoder"));
        Assert.Contains("UNet2DConditionModel", Row("unet"));
        Assert.Contains(pipeline.Unet.ParameterCount().ToString("N0", inv), Row("unet"));
        Assert.Contains("AutoencoderKL", Row("vae"));
        Assert.Contains(pipeline.Vae.parameters().Sum(p => p.numel()).ToString("N0", inv), Row("vae"));
        Assert.Contains("DDIMScheduler", Row("scheduler"));
        Assert.Contains("32 x 32", page.Find(".summary-table").TextContent); // the images it makes
        Assert.Empty(page.FindAll(".model-problem"));
        Assert.True(page.Find("button.start-evaluate").HasAttribute("disabled")); // no other pipeline to evaluate against
        Assert.Contains("No FID-proxy for pipelines", page.Find(".no-pipeline-fid").TextContent);
        Assert.Equal("export?model=sd-small", page.Find("a.export-model").GetAttribute("href"));
        Assert.Empty(page.FindAll("a.distill-model")); // not pruned: nothing to recover
        Assert.Equal("prune?model=sd-small", page.Find("a.prune-model").GetAttribute("href"));

        Assert.Equal("7.5", page.Find(".guidance-field input").GetAttribute("value"));
        Assert.Equal("1", page.Find(".count-field input").GetAttribute("value"));
        Assert.Contains("TorchSharp", page.Find(".runtime-note").TextContent);
        Assert.True(page.Find("button.start-sample").HasAttribute("disabled")); // no prompt yet
    }

    [Fact]
    public async Task The_prompt_box_samples_the_pipeline_in_a_job_and_shows_the_image()
    {
        await _queue.StartAsync(CancellationToken.None);
        var page = Context.Render<ModelPage>(p => p.Add(x => x.Name, "sd-small"));
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".prompt-field textarea")), WaitTimeout);
        page.Find(".prompt-field textarea").Input("a red cube on a table");
        page.Find(".negative-prompt-field input").Input("blurry");
        page.Find(".steps-field input").Change("2");
        page.Find(".count-field input").Change("2");
        page.Find(".seed-field input").Change("3");
        page.WaitForAssertion(() => Assert.False(page.Find("button.start-sample").HasAttribute("disabled")), WaitTimeout);
        page.Find("button.start-sample").Click();

        page.WaitForAssertion(() => Assert.NotNull(page.Find("img.sample-grid")), TimeSpan.FromMinutes(3));
        await TestPipelines.WaitUntilAsync(() => _state.Jobs.Single().IsFinished, TimeSpan.FromMinutes(1));
        var job = Assert.Single(_state.Jobs);
        Assert.True(job.Status == JobStatus.Succeeded, job.Error);
        Assert.StartsWith("data:image/png;base64,", page.Find("img.sample-grid").GetAttribute("src"));
        Assert.Contains("2 images, 2 steps, guidance 7.5, seed 3", page.Find(".sample-caption").TextContent);
        Assert.Contains("\"a red cube on a table\"", job.Name);
        string png = Directory.EnumerateFiles(Path.Combine(_samples.Root, "out", StudioOptions.SamplesFolder), "sd-small-*.png").Single();
        using var image = SixLabors.ImageSharp.Image.Load(png);
        Assert.Equal((32 * 2 + 2 * 3, 32 + 2 * 2), (image.Width, image.Height)); // two 32 x 32 images side by side, grey gaps
    }
}

/// <summary>The Prune page and job on a pipeline: the methods that work there, calibration prompts, a pipeline written and listed, a quick look without FID.</summary>
public sealed class PipelinePruneTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly JobStateService _state = new();

    public PipelinePruneTests()
    {
        TestPipelines.CopyTo(Path.Combine(_samples.ModelsRoot, "sd-small"));
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny-unet"));
        Context.Services.AddSingleton(_state);
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
        Context.Services.AddSingleton<PruneEstimates>();
    }

    public void Dispose() => _samples.Dispose();

    /// <summary>The names a MudSelect offers, from its open list.</summary>
    private static List<string> Offered(IRenderedComponent<MudPopoverProvider> popovers) =>
        popovers.FindAll(".mud-list-item").Select(i => i.TextContent.Trim()).ToList();

    [Fact]
    public async Task The_form_offers_only_the_methods_that_work_on_pipelines_and_queues_the_calibration_prompts()
    {
        var popovers = Context.Render<MudPopoverProvider>();
        var navigation = Context.Services.GetRequiredService<Microsoft.AspNetCore.Components.NavigationManager>();
        navigation.NavigateTo(navigation.GetUriWithQueryParameter("model", "sd-small"));
        var page = Context.Render<PrunePage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".pipeline-methods")), WaitTimeout);
        page.WaitForAssertion(() => Assert.Contains("No time estimate for Stable Diffusion pipelines yet", page.Find(".time-estimate").TextContent), WaitTimeout);
        Assert.Contains("Estimated memory for pruning with magnitude", page.Find(".resource-estimate").TextContent); // the U-Net's, from its config
        Assert.Contains("The pruned pipeline", page.Find(".output-hint").TextContent);
        page.FindAll("div.mud-input-control.method-select, .method-select div.mud-input-control").First().MouseDown();
        popovers.WaitForAssertion(() => Assert.Contains("magnitude", Offered(popovers)), WaitTimeout);
        var offered = Offered(popovers);
        Assert.Contains("ecodiff", offered);
        Assert.Contains("laptop", offered);
        Assert.Contains("taylor", offered); // calibrates on the pipeline's own samples from the prompts
        Assert.Contains("learnable-depth", offered);
        Assert.Empty(page.FindAll(".prompts-field")); // magnitude reads no prompts

        var method = page.FindComponents<MudSelect<string>>().Single(s => s.Instance.Class?.Contains("method-select") == true);
        await page.InvokeAsync(() => method.Instance.ValueChanged.InvokeAsync("ecodiff"));
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".prompts-field textarea")), WaitTimeout);
        Assert.Equal("7.5", page.Find(".calibration-guidance-field input").GetAttribute("value"));
        page.Find(".prompts-field textarea").Change("a red cube on a table\n\n  a blue sky  \n");
        page.Find("button.start-prune").Click();

        var queue = (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        page.WaitForAssertion(() => Assert.Single(queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<PruneJob>(queue.Enqueued[0]);
        Assert.Equal(Path.Combine(_samples.ModelsRoot, "sd-small"), job.Request.ModelPath);
        Assert.Equal("ecodiff", job.Request.Method);
        Assert.Equal(["a red cube on a table", "a blue sky"], job.Request.Prompts);
        Assert.Equal(7.5, job.Request.EcoDiff.GuidanceScale);
        Assert.StartsWith(Path.Combine(_samples.Root, "out", "pruned", "sd-small-ecodiff-20-"), job.Request.OutputPath);
    }

    [Fact]
    public void A_single_model_still_gets_every_method_and_no_prompts()
    {
        var popovers = Context.Render<MudPopoverProvider>();
        var navigation = Context.Services.GetRequiredService<Microsoft.AspNetCore.Components.NavigationManager>();
        navigation.NavigateTo(navigation.GetUriWithQueryParameter("model", "tiny-unet"));
        var page = Context.Render<PrunePage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".prune-form")), WaitTimeout);
        Assert.Empty(page.FindAll(".pipeline-methods"));
        page.FindAll("div.mud-input-control.method-select, .method-select div.mud-input-control").First().MouseDown();
        popovers.WaitForAssertion(() => Assert.Contains("taylor", Offered(popovers)), WaitTimeout);
        Assert.Contains("learnable-depth", Offered(popovers));
    }

    [Fact]
    public void A_finished_pipeline_prune_job_offers_to_compare_it_with_the_original()
    {
        var job = new PruneJob(new PruneRequest
        {
            ModelPath = Path.Combine(_samples.ModelsRoot, "sd-small"), Method = "magnitude", TargetParams = 0.2,
            OutputPath = Path.Combine(_samples.Root, "out", "pruned", "sd-small-magnitude-20-20261203-120000-000"),
        });
        _state.Track(job);
        _state.MarkRunning(job.Id);
        _state.MarkSucceeded(job.Id);
        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.Jobs.JobDetail>(p => p.Add(x => x.Id, job.Id));
        page.WaitForAssertion(() => Assert.Equal("compare?models=sd-small&models=pruned%2Fsd-small-magnitude-20-20261203-120000-000",
            page.Find("a.compare-with-original").GetAttribute("href")), WaitTimeout);
    }

    [Fact]
    public async Task A_prune_job_on_a_pipeline_writes_a_pipeline_listed_as_one_and_a_quick_look_of_a_fixed_prompt_without_fid()
    {
        string model = Path.Combine(_samples.ModelsRoot, "sd-small");
        string output = Path.Combine(_samples.Root, "out", "pruned", "sd-small-ecodiff");
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);
        var job = new PruneJob(new PruneRequest
        {
            ModelPath = model, Method = "ecodiff", TargetParams = 0.2, OutputPath = output, Iterations = 2, Steps = 2, Calibration = 2, Seed = 1,
            Prompts = ["a red cube on a table", "a blue sky"], EcoDiff = new EcoDiffOptions { BatchSize = 2, GuidanceScale = 7.5 },
        }, new QuickEvaluation(Steps: 2));
        await queue.EnqueueAsync(job);
        try
        {
            await TestPipelines.WaitUntilAsync(() => state.Find(job.Id)?.IsFinished == true, TimeSpan.FromMinutes(5));
        }
        catch (OperationCanceledException)
        {
            Assert.Fail("The job did not finish in 5 minutes; its log: " + string.Join(" | ", state.Find(job.Id)!.Lines.TakeLast(30)));
        }
        await queue.StopAsync(CancellationToken.None);

        var done = state.Find(job.Id)!;
        Assert.True(done.Status == JobStatus.Succeeded, done.Error);
        Assert.Contains("ecodiff: removed", done.Result);
        Assert.Contains("SSIM to the original", done.Result);
        Assert.Contains("no FID-proxy for pipelines", done.Result);
        Assert.Contains("the reference | the model | 4 x their difference", done.Preview!.Caption);
        Assert.True(File.Exists(Path.Combine(output, PruneJob.QuickLookFile)));
        using (var grid = SixLabors.ImageSharp.Image.Load(Path.Combine(output, PruneJob.QuickLookFile)))
            Assert.Equal((3 * 32 + 4 * 2, 2 * 32 + 3 * 2), (grid.Width, grid.Height)); // 2 rows (images) of 3 (original, pruned, difference), 32 px, 2 px gaps
        var quickLook = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.EvalReport)))!;
        Assert.Equal("stable_diffusion_eval", (string?)quickLook["kind"]);
        Assert.Equal([QuickEvaluation.PipelinePrompt], quickLook["prompts"]!.AsArray().Select(p => (string)p!));
        Assert.InRange((double)quickLook["ssim"]!["mean"]!, -1, 1);
        Assert.True(double.IsFinite((double)quickLook["psnr_db"]!["mean"]!));
        Assert.DoesNotContain(_samples.Root, quickLook.ToJsonString()); // names and hashes, never local paths
        var report = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ModelFolder.PruneReport)))!;
        Assert.Equal(["a red cube on a table", "a blue sky"], report["settings"]!["prompts"]!.AsArray().Select(p => (string)p!));

        var listed = Assert.Single(await new FileSystemModelCatalog(_samples.Root, [Path.Combine(_samples.Root, "out", "pruned")]).ListModelsAsync(),
            m => m.Name == "pruned/sd-small-ecodiff");
        Assert.True(listed.Problem is null, listed.Problem);
        Assert.True(listed.IsPipeline);
        Assert.True(listed.SafetensorsBytes < TestPipelines.SafetensorsBytes(model)); // a smaller U-Net
        using var pruned = StableDiffusionPipeline.Load(output); // and it loads whole
        Assert.Equal(report["params_after"]!.GetValue<long>(), pruned.Unet.ParameterCount());
    }
}

/// <summary>The JSON API on a pipeline: a sample job from a prompt run for real, and what a pipeline cannot take refused before anything is queued.</summary>
public sealed class PipelineApiTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public async Task A_sample_job_from_a_prompt_runs_and_what_pipelines_cannot_take_is_refused()
    {
        TestPipelines.CopyTo(Path.Combine(_samples.ModelsRoot, "sd-small"));
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny"));
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();
        foreach (var (body, expected) in new[]
        {
            ("""{"kind": "sample", "model": "sd-small"}""", "'prompt' is required"),
            ("""{"kind": "sample", "model": "sd-small", "prompt": "a cat", "runtime": "onnx"}""", "TorchSharp only"),
            ("""{"kind": "sample", "model": "sd-small", "prompt": "a cat", "count": 17}""", "at most 16"),
            ("""{"kind": "sample", "model": "tiny", "prompt": "a cat"}""", "'prompt' is for Stable Diffusion pipelines"),
            ("""{"kind": "prune", "model": "sd-small", "method": "taylor", "target_params": 0.2, "guidance": 5}""", "for ecodiff and ecodiff-layer"),
            ("""{"kind": "prune", "model": "sd-small", "method": "magnitude", "target_params": 0.2, "prompts": ["a cat"]}""", "reads no prompts"),
            ("""{"kind": "prune", "model": "tiny", "method": "ecodiff", "target_params": 0.2, "prompts": ["a cat"]}""", "calibrate a Stable Diffusion pipeline"),
            ("""{"kind": "evaluate", "model": "sd-small"}""", "'reference' is required"),
        })
            await TestModels.AssertRefusedAsync(client, body, expected);

        var job = await TestModels.RunJobAsync(client,
            """{"kind": "sample", "model": "sd-small", "prompt": "a red cube", "negative_prompt": "blurry", "steps": 2, "count": 2, "seed": 4}""", TimeSpan.FromMinutes(3));
        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        Assert.Contains("Sampled 2 images in 2 steps on torch", (string)job["result"]!["summary"]!);
        Assert.Contains("\"a red cube\"", (string)job["name"]!);
    }
}

/// <summary>Compare on pipelines: a prompt instead of FID, one row per pipeline from the same seed, and no mixing with single models.</summary>
public sealed class PipelineCompareTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly JobStateService _state = new();

    public PipelineCompareTests()
    {
        TestPipelines.CopyTo(Path.Combine(_samples.ModelsRoot, "sd-small"));
        TestPipelines.CopyTo(Path.Combine(_samples.Root, "out", "pruned", "sd-copy"));
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny-unet"));
        Context.Services.AddSingleton(_state);
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root, [Path.Combine(_samples.Root, "out", "pruned")]));
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
        Context.Services.AddSingleton(new DiffusionPrune.Studio.Compare.ComparisonFolders(Path.Combine(_samples.Root, "out", "compared")));
    }

    public void Dispose() => _samples.Dispose();

    private IRenderedComponent<DiffusionPrune.Studio.Components.Pages.Compare.Compare> Open(params string[] models)
    {
        var navigation = Context.Services.GetRequiredService<NavigationManager>();
        navigation.NavigateTo("compare?" + string.Join("&", models.Select(m => "models=" + Uri.EscapeDataString(m))));
        return Context.Render<DiffusionPrune.Studio.Components.Pages.Compare.Compare>();
    }

    [Fact]
    public void Two_pipelines_are_compared_on_a_prompt_and_a_pipeline_beside_a_single_model_is_refused()
    {
        var mixed = Open("sd-small", "tiny-unet");
        mixed.WaitForAssertion(() => Assert.Contains("Compare Stable Diffusion pipelines with pipelines only", mixed.Markup), WaitTimeout);
        Assert.True(mixed.Find("button.start-compare").HasAttribute("disabled"));

        var page = Open("sd-small", "pruned/sd-copy");
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".pipelines-note")), WaitTimeout);
        Assert.Empty(page.FindAll(".samples-field")); // no FID images for pipelines
        Assert.True(page.Find("button.start-compare").HasAttribute("disabled")); // no prompt yet
        page.Find(".compare-prompt-field input").Input("a red cube");
        page.Find(".compare-steps-field input").Change("3");
        page.WaitForAssertion(() => Assert.False(page.Find("button.start-compare").HasAttribute("disabled")), WaitTimeout);
        page.Find("button.start-compare").Click();

        var queue = (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        page.WaitForAssertion(() => Assert.Single(queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<PipelineCompareJob>(queue.Enqueued[0]);
        Assert.Equal([Path.Combine(_samples.ModelsRoot, "sd-small"), Path.Combine(_samples.Root, "out", "pruned", "sd-copy")], job.Request.PipelinePaths);
        Assert.Equal("a red cube", job.Request.Prompt);
        Assert.Equal(3, job.Request.Steps);
        Assert.Equal(7.5, job.Request.GuidanceScale);
        Assert.StartsWith(Path.Combine(_samples.Root, "out", "samples", "compare-pipelines-"), job.Request.OutputPath);
    }

    [Fact]
    public async Task A_pipeline_comparison_draws_one_row_per_pipeline_from_the_same_seed()
    {
        string output = Path.Combine(_samples.Root, "out", "samples", "compare.png");
        var state = new JobStateService();
        using var queue = new ChannelJobQueue(state, NullLogger<ChannelJobQueue>.Instance);
        await queue.StartAsync(CancellationToken.None);
        var job = new PipelineCompareJob(new PipelineCompareRequest(
            [Path.Combine(_samples.ModelsRoot, "sd-small"), Path.Combine(_samples.Root, "out", "pruned", "sd-copy")], ["sd-small", "sd-copy"],
            "a red cube", null, 7.5, 2, 2, 5, output));
        await queue.EnqueueAsync(job);
        await TestPipelines.WaitUntilAsync(() => state.Find(job.Id)?.IsFinished == true, TimeSpan.FromMinutes(3));
        await queue.StopAsync(CancellationToken.None);

        var done = state.Find(job.Id)!;
        Assert.True(done.Status == JobStatus.Succeeded, done.Error);
        Assert.Contains("row 1: sd-small (U-Net 792,964 parameters", done.Result);
        Assert.Contains("row 2: sd-copy", done.Result);
        Assert.NotNull(done.Preview);
        using var grid = SixLabors.ImageSharp.Image.Load<SixLabors.ImageSharp.PixelFormats.Rgb24>(output);
        Assert.Equal((2 * 128 + 3 * 2, 2 * 128 + 3 * 2), (grid.Width, grid.Height)); // 2 rows of 2 images, 32 px enlarged 4 times
        // the same pipeline from the same seed: the two rows are the same pixels
        for (int y = 0; y < 128; y += 7)
            for (int x = 0; x < grid.Width; x += 5)
                Assert.Equal(grid[x, 2 + y], grid[x, 2 + 128 + 2 + y]);
    }
}
