using System.IO.Compression;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Export;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Export;
using DiffusionPrune.Studio.Jobs;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using ExportPage = DiffusionPrune.Studio.Components.Pages.Export.Export;

namespace DiffusionPrune.Studio.Tests;

/// <summary>The Export page: a model and its formats make an export job; the bundles are listed for download.</summary>
public sealed class ExportPageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public ExportPageTests()
    {
        _samples.AddModel("alpha", TestModels.TinyUNetConfig(), 16);
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
        Context.Services.AddSingleton(new JobStateService());
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton(new BundleFolders(Path.Combine(_samples.Root, "out", "exports")));
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions { OutputRoot = Path.Combine(_samples.Root, "out") }));
    }

    public void Dispose() => _samples.Dispose();

    [Fact]
    public void Export_makes_a_job_with_the_chosen_formats_and_needs_one_format()
    {
        var page = Context.Render<ExportPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find("button.start-export")), WaitTimeout);
        Assert.Contains("None yet", page.Find(".no-bundles").TextContent);

        // MudCheckBox handles a change asynchronously: wait for each re-render before the next step
        page.Find(".format-onnx input").Change(false);
        page.Find(".format-safetensors input").Change(false);
        page.WaitForAssertion(() => Assert.True(page.Find("button.start-export").HasAttribute("disabled")), WaitTimeout);
        Assert.NotNull(page.Find(".format-error"));
        page.Find(".format-onnx input").Change(true);
        page.WaitForAssertion(() => Assert.False(page.Find("button.start-export").HasAttribute("disabled")), WaitTimeout);

        page.Find("button.start-export").Click();
        var queue = (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();
        page.WaitForAssertion(() => Assert.Single(queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<ExportJob>(queue.Enqueued[0]);
        Assert.Equal([ExportFormat.Onnx], job.Request.Formats);
        Assert.Equal(Path.Combine(_samples.ModelsRoot, "alpha"), job.Request.ModelPath);
        Assert.StartsWith(Path.Combine(_samples.Root, "out", "exports", "alpha-"), job.Request.OutputPath);
    }
}

/// <summary>An export job over the JSON API, run for real on a tiny model, and its zip downloaded.</summary>
public sealed class ExportApiTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public async Task An_export_job_writes_a_bundle_whose_zip_downloads_and_holds_the_model()
    {
        long parameters = TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny"));
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();

        foreach (var (body, expected) in new[]
        {
            ("""{"kind": "export", "model": "nope"}""", "no model named 'nope'"),
            ("""{"kind": "export", "model": "tiny", "formats": "tflite"}""", "'formats'"),
            ("""{"kind": "export"}""", "'model' is required"),
        })
            await TestModels.AssertRefusedAsync(client, body, expected);

        var job = await TestModels.RunJobAsync(client, """{"kind": "export", "model": "tiny"}""", TimeSpan.FromMinutes(3));
        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        string name = (string)job["result"]!["bundle"]!;
        string download = (string)job["result"]!["download"]!;
        Assert.Equal($"/api/exports/{name}.zip", download);

        var listed = Assert.Single(JsonNode.Parse(await client.GetStringAsync("/api/exports"))!.AsArray())!;
        Assert.Equal(name, (string?)listed["name"]);
        Assert.Equal(parameters, (long)listed["parameters"]!);

        var zipResponse = await client.GetAsync(download);
        Assert.Equal(HttpStatusCode.OK, zipResponse.StatusCode);
        Assert.Equal("application/zip", zipResponse.Content.Headers.ContentType?.MediaType);
        using var zip = new ZipArchive(await zipResponse.Content.ReadAsStreamAsync());
        var entries = zip.Entries.Select(e => e.FullName).ToHashSet();
        foreach (var file in new[] { "config.json", "diffusion_pytorch_model.safetensors", "model.onnx", "onnx_model.json", "scheduler_config.json", "README.md" })
            Assert.Contains($"{name}/{file}", entries);
        Assert.DoesNotContain(entries, e => e.Contains("..", StringComparison.Ordinal) || e.StartsWith('/'));

        foreach (var path in new[] { "/api/exports/nothing.zip", $"/api/exports/{name}", "/api/exports/..%2Fdata%2Fjobs.db", $"/api/exports/{name}.zip.partial" })
            Assert.True((await client.GetAsync(path)).StatusCode == HttpStatusCode.NotFound, path);
    }
}

/// <summary>The On-device page lists the ONNX bundles and hands the chosen one to its JavaScript module.</summary>
public sealed class OnDevicePageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    private BundleFolders Folders() => new(Path.Combine(_samples.Root, "exports"));

    private void Bundle(string name, bool onnx)
    {
        string folder = Path.Combine(_samples.Root, "exports", name);
        Directory.CreateDirectory(folder);
        if (onnx) File.WriteAllText(Path.Combine(folder, "onnx_model.json"), """{"class_name": "UNet2DModel", "parameters": 1234, "macs": 5678}""");
        File.WriteAllBytes(BundleFolders.ZipOf(folder), [1]);
    }

    [Fact]
    public void Without_an_onnx_bundle_the_page_says_to_export_one()
    {
        Bundle("weights-only", onnx: false);
        Context.Services.AddSingleton(Folders());
        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.OnDevice.OnDevice>();
        Assert.NotNull(page.Find(".no-bundles"));
        Assert.Empty(page.FindAll(".ondevice"));
    }

    [Fact]
    public void The_chosen_bundle_is_mounted_by_the_module_from_its_own_files()
    {
        Bundle("tiny-a", onnx: true);
        Bundle("tiny-b", onnx: true);
        Context.Services.AddSingleton(Folders());
        var module = Context.JSInterop.SetupModule("./js/ondevice.mjs");
        module.SetupVoid("mount", _ => true);
        Context.Services.GetRequiredService<Microsoft.AspNetCore.Components.NavigationManager>().NavigateTo("ondevice?bundle=tiny-b");
        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.OnDevice.OnDevice>();
        page.WaitForAssertion(() => Assert.Single(module.Invocations, i => i.Identifier == "mount"), WaitTimeout);
        Assert.Equal("api/exports/tiny-b/", module.Invocations.Single(i => i.Identifier == "mount").Arguments[1]);
        Assert.NotNull(page.Find(".ondevice button.ondevice-run[disabled]")); // enabled by the module once the bundle loads
        Assert.Contains("1,234 parameters", page.Find(".bundle-select").TextContent + page.Markup);
    }
}
