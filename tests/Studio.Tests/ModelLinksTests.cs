using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Studio.Catalog;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using ModelsPage = DiffusionPrune.Studio.Components.Pages.Models.Models;

namespace DiffusionPrune.Studio.Tests;

/// <summary>Models added by path: only from inside a configured root, after symbolic links, and only when they load.</summary>
public sealed class ModelLinksTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    private string Library => Path.Combine(_samples.Root, "library");
    private string Outside => Path.Combine(_samples.Root, "elsewhere");

    private ModelLinks Links() => new([Library], Path.Combine(_samples.Root, "data", "linked-models.json"));

    public void Dispose() => _samples.Dispose();

    [Fact]
    public async Task A_model_deep_inside_a_root_is_added_and_listed_and_one_outside_is_refused()
    {
        string deep = Path.Combine(Library, "hub", "models--me--tiny", "snapshots", "abc");
        long parameters = TestModels.SaveTinyUNet(deep);
        TestModels.SaveTinyUNet(Path.Combine(Outside, "secret"));
        Directory.CreateDirectory(Path.Combine(Library, "links"));
        File.CreateSymbolicLink(Path.Combine(Library, "links", "escape"), Path.Combine(Outside, "secret")); // inside by name, outside in fact
        Directory.CreateSymbolicLink(Path.Combine(Library, "links", "loop"), Path.Combine(Library, "links", "loop"));
        File.WriteAllText(Path.Combine(Library, "hub", "config.json"), "{not json");
        var links = Links();

        Assert.Equal("linked/tiny", await links.AddAsync(deep, "tiny"));
        var catalog = new FileSystemModelCatalog(_samples.Root, [], links.List);
        var listed = Assert.Single(await catalog.ListModelsAsync(), m => m.Name == "linked/tiny");
        Assert.Equal("UNet2DModel", listed.ClassName);
        Assert.Equal(deep, listed.FolderPath);

        foreach (var (path, name, status, expected) in new[]
        {
            (Path.Combine(Outside, "secret"), "secret", 400, "not inside a configured model root"),
            (Path.Combine(Library, "links", "escape"), "escape", 400, "after following symbolic links"),
            (Path.Combine(Library, "..", "elsewhere", "secret"), "dots", 400, "not inside a configured model root"),
            (Path.Combine(Library, "links", "loop"), "loop", 400, "cannot be resolved"),
            ("library/hub", "relative", 400, "not an absolute path"),
            (Path.Combine(Library, "hub"), "broken", 400, "does not load"),
            (Path.Combine(Library, "nothing"), "nothing", 400, "not a model folder"),
            (deep, "tiny", 409, "added already"),
            (deep, "../x", 400, "cannot name a model"),
        })
        {
            var refusal = await Assert.ThrowsAsync<ModelUploadException>(() => links.AddAsync(path, name));
            Assert.True(status == refusal.StatusCode, $"{name}: {refusal.StatusCode} {refusal.Message}");
            Assert.Contains(expected, refusal.Message);
        }
        Assert.Single(links.List());
        Assert.Single(Links().List()); // kept across restarts
    }

    [Fact]
    public async Task A_link_out_of_a_root_is_neither_listed_nor_added_even_inside_a_model_folder()
    {
        TestModels.SaveTinyUNet(Path.Combine(Outside, "secret"));
        Directory.CreateDirectory(Library);
        Directory.CreateSymbolicLink(Path.Combine(Library, "escape"), Path.Combine(Outside, "secret")); // a folder link out
        string sneaky = Path.Combine(Library, "sneaky");
        TestModels.SaveTinyUNet(sneaky);
        File.Delete(Path.Combine(sneaky, "scheduler_config.json"));
        File.WriteAllText(Path.Combine(Outside, "private.txt"), "not for the Studio");
        File.CreateSymbolicLink(Path.Combine(sneaky, "scheduler_config.json"), Path.Combine(Outside, "private.txt")); // a file link out
        TestModels.SaveTinyUNet(Path.Combine(Library, "honest"));
        var links = Links();

        var listed = (await new FileSystemModelCatalog(_samples.Root, [], links.List, [Library]).ListModelsAsync()).Select(m => m.Name).ToList();
        Assert.Contains("library/honest", listed);
        Assert.DoesNotContain("library/escape", listed);
        Assert.DoesNotContain("library/sneaky", listed);
        var refusal = await Assert.ThrowsAsync<ModelUploadException>(() => links.AddAsync(sneaky, "sneaky"));
        Assert.Contains("symbolic link that leads out of the model root", refusal.Message);
        Assert.Contains("cannot be resolved", (await Assert.ThrowsAsync<ModelUploadException>(() => links.AddAsync("/\0bad", "nul"))).Message);
    }

    [Fact]
    public async Task Without_configured_roots_nothing_is_added_by_path()
    {
        string folder = Path.Combine(Library, "tiny");
        TestModels.SaveTinyUNet(folder);
        var none = new ModelLinks([], Path.Combine(_samples.Root, "data", "linked-models.json"));
        Assert.Contains("No model roots are configured", (await Assert.ThrowsAsync<ModelUploadException>(() => none.AddAsync(folder, "tiny"))).Message);
    }

    [Fact]
    public async Task The_api_adds_by_path_and_refuses_a_path_outside_the_roots()
    {
        string folder = Path.Combine(Library, "tiny");
        TestModels.SaveTinyUNet(folder);
        TestModels.SaveTinyUNet(Path.Combine(Outside, "secret"));
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?>
        {
            ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data"),
            ["Studio:ModelRoots:0"] = Library,
        });
        var client = app.GetTestClient();
        Task<HttpResponseMessage> Post(string json) => client.PostAsync("/api/models", new StringContent(json, Encoding.UTF8, "application/json"));
        var outside = await Post(new JsonObject { ["name"] = "secret", ["path"] = Path.Combine(Outside, "secret") }.ToJsonString());
        Assert.Equal(HttpStatusCode.BadRequest, outside.StatusCode);
        var added = await Post(new JsonObject { ["name"] = "tiny", ["path"] = folder }.ToJsonString());
        Assert.Equal(HttpStatusCode.Created, added.StatusCode);
        Assert.Equal("linked/tiny", (string?)JsonNode.Parse(await added.Content.ReadAsStringAsync())!["name"]);
        var models = JsonNode.Parse(await client.GetStringAsync("/api/models"))!.AsArray();
        Assert.Contains(models, m => (string?)m!["name"] == "linked/tiny" && (long?)m["parameters"] > 0);
        Assert.Contains(models, m => (string?)m!["name"] == "library/tiny"); // the root's own folders are listed too
    }
}

/// <summary>The Models page's "add a folder by path" panel.</summary>
public sealed class AddByPathPageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public void A_folder_is_added_by_path_and_a_refusal_is_shown_in_place()
    {
        string library = Path.Combine(_samples.Root, "library");
        TestModels.SaveTinyUNet(Path.Combine(library, "tiny"));
        var links = new ModelLinks([library], Path.Combine(_samples.Root, "data", "linked-models.json"));
        Context.Services.AddSingleton(links);
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root, [], links.List));
        Context.Services.AddSingleton(new ModelUploadService(Path.Combine(_samples.Root, "out", "uploaded"), new StudioOptions()));
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions()));
        var page = Context.Render<ModelsPage>();

        page.Find(".link-path input").Input("/etc");
        page.Find(".link-name input").Input("etc");
        page.Find("button.link-button").Click();
        page.WaitForAssertion(() => Assert.Contains("not inside a configured model root", page.Find(".link-result").TextContent), WaitTimeout);

        page.Find(".link-path input").Input(Path.Combine(library, "tiny"));
        page.Find(".link-name input").Input("tiny");
        page.Find("button.link-button").Click();
        page.WaitForAssertion(() => Assert.Contains("Added linked/tiny", page.Find(".link-result").TextContent), WaitTimeout);
        page.WaitForAssertion(() => Assert.Contains("linked/tiny", page.Find(".models-table").TextContent), WaitTimeout);
    }
}
