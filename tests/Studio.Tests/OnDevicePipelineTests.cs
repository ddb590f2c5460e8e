using System.IO.Compression;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Studio.Export;
using DiffusionPrune.TextEncoding;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;

namespace DiffusionPrune.Studio.Tests;

/// <summary>
/// sd-pipeline-small exported as an ONNX pipeline bundle under a samples root's <c>out/exports/sd-onnx/</c> (zipped beside
/// it, as an export job leaves a bundle), next to a single-model bundle <c>unet-bundle</c>. Tests read it and never change it.
/// </summary>
public sealed class OnnxPipelineBundle : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public const string Name = "sd-onnx", SingleModel = "unet-bundle";

    public OnnxPipelineBundle()
    {
        string source = TestPipelines.CopyTo(Path.Combine(_samples.Root, "source", "sd-small"));
        Folder = Path.Combine(Exports, Name);
        Export = StableDiffusionOnnxExporter.Export(source, Folder);
        ZipFile.CreateFromDirectory(Folder, BundleFolders.ZipOf(Folder), CompressionLevel.Fastest, includeBaseDirectory: true);
        string single = Directory.CreateDirectory(Path.Combine(Exports, SingleModel)).FullName;
        File.WriteAllText(Path.Combine(single, "onnx_model.json"), """{"class_name": "UNet2DModel", "parameters": 1234, "macs": 5678}""");
        File.WriteAllBytes(BundleFolders.ZipOf(single), [1]);
    }

    /// <summary>The samples root (its <c>out/</c> is the Studio's output root).</summary>
    public string Root => _samples.Root;

    public string Exports => Path.Combine(_samples.Root, "out", StudioOptions.ExportsFolder);

    /// <summary>The exported pipeline folder.</summary>
    public string Folder { get; }

    public StableDiffusionOnnxExport Export { get; }

    public void Dispose() => _samples.Dispose();
}

/// <summary>
/// An ONNX pipeline bundle in the Studio's API: listed once as an OnnxStableDiffusionPipeline with the weights of its three
/// graphs, its graphs and configs served one by one (nothing else), and <c>POST api/exports/NAME/tokenize</c> giving the ids
/// of the bundle's own CLIP tokenizer, refusing what it cannot take with a message that says what was wrong.
/// </summary>
public sealed class OnDevicePipelineApiTests(OnnxPipelineBundle bundle) : IClassFixture<OnnxPipelineBundle>, IAsyncLifetime
{
    private WebApplication _app = null!;
    private HttpClient _client = null!;

    public async Task InitializeAsync()
    {
        _app = await TestModels.StartStudioAsync(bundle.Root, new Dictionary<string, string?>
        {
            ["Studio:DataFolder"] = Path.Combine(bundle.Root, "data-" + Guid.NewGuid().ToString("N")),
            ["Studio:MaxJsonBodyBytes"] = "16384",
        });
        _client = _app.GetTestClient();
    }

    public async Task DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private Task<HttpResponseMessage> Tokenize(string name, string body, string contentType = "application/json") =>
        _client.PostAsync($"/api/exports/{name}/tokenize", new StringContent(body, Encoding.UTF8, contentType));

    private static async Task<string> Detail(HttpResponseMessage response) =>
        (string)JsonNode.Parse(await response.Content.ReadAsStringAsync())!["detail"]!;

    [Fact]
    public async Task A_pipeline_bundle_is_listed_once_as_an_OnnxStableDiffusionPipeline_with_the_weights_of_its_three_graphs()
    {
        var listed = JsonNode.Parse(await _client.GetStringAsync("/api/exports"))!.AsArray();

        Assert.Equal(2, listed.Count); // the pipeline's component folders are not bundles of their own
        var pipeline = Assert.Single(listed, b => (string?)b!["name"] == OnnxPipelineBundle.Name)!;
        Assert.Equal(OnnxPipelineLayout.ClassName, (string?)pipeline["class_name"]);
        Assert.True((bool)pipeline["pipeline"]!);
        // every initializer of text_encoder, unet and vae_decoder: the exporter's parameter counts of the three components
        Assert.Equal(bundle.Export.Components.Sum(c => c.Parameters), (long)pipeline["parameters"]!);
        Assert.Equal($"/api/exports/{OnnxPipelineBundle.Name}.zip", (string?)pipeline["download"]);
        var single = Assert.Single(listed, b => (string?)b!["name"] == OnnxPipelineBundle.SingleModel)!;
        Assert.False((bool)single["pipeline"]!);
        Assert.Equal("UNet2DModel", (string?)single["class_name"]);
    }

    [Fact]
    public async Task The_pipelines_graphs_and_configs_are_served_and_nothing_else_of_it()
    {
        foreach (var file in BundleFolders.ServedPipelineFiles)
        {
            var response = await _client.GetAsync($"/api/exports/{OnnxPipelineBundle.Name}/{file}");
            Assert.True(response.StatusCode == HttpStatusCode.OK, $"{file}: {(int)response.StatusCode}");
            Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(bundle.Folder, file)), await response.Content.ReadAsByteArrayAsync());
        }
        foreach (var path in new[]
                 {
                     $"/api/exports/{OnnxPipelineBundle.Name}/tokenizer/vocab.json", // the tokenizer stays on the server
                     $"/api/exports/{OnnxPipelineBundle.Name}/unet/..%2F..%2F{OnnxPipelineBundle.Name}.zip",
                     $"/api/exports/{OnnxPipelineBundle.Name}/model.onnx", // a single-model bundle's file, not a pipeline's
                     $"/api/exports/{OnnxPipelineBundle.SingleModel}/unet/model.onnx",
                     "/api/exports/nothing/unet/model.onnx",
                 })
            Assert.True((await _client.GetAsync(path)).StatusCode == HttpStatusCode.NotFound, path);
    }

    [Theory]
    [InlineData("a photograph of an astronaut riding a horse", "blurry")]
    [InlineData("a lighthouse by the sea, café, 1998", "")]
    [InlineData("", "low quality")] // the empty prompt is a prompt
    public async Task Tokenize_gives_the_ids_of_the_bundles_own_tokenizer_for_the_prompt_and_the_negative_prompt(string prompt, string negative)
    {
        var response = await Tokenize(OnnxPipelineBundle.Name, new JsonObject { ["prompt"] = prompt, ["negative_prompt"] = negative }.ToJsonString());

        Assert.True(response.StatusCode == HttpStatusCode.OK, await response.Content.ReadAsStringAsync());
        var body = JsonNode.Parse(await response.Content.ReadAsStringAsync())!;
        var tokenizer = ClipTokenizer.Load(Path.Combine(bundle.Folder, OnnxPipelineLayout.TokenizerFolder));
        Assert.Equal(tokenizer.EncodeForModel(prompt, tokenizer.ModelMaxLength).InputIds, body["input_ids"]!.AsArray().Select(n => (long)n!).ToArray());
        Assert.Equal(tokenizer.EncodeForModel(negative, tokenizer.ModelMaxLength).InputIds, body["negative_input_ids"]!.AsArray().Select(n => (long)n!).ToArray());
        Assert.Equal(tokenizer.ModelMaxLength, (int)body["model_max_length"]!);
        Assert.Equal(tokenizer.Encode(prompt).Length, (int)body["prompt_tokens"]!);
        Assert.False((bool)body["prompt_truncated"]!);
    }

    [Fact]
    public async Task Tokenize_cuts_a_long_prompt_to_the_text_encoders_length_and_says_so_and_defaults_the_negative_prompt_to_empty()
    {
        string prompt = string.Join(", ", Enumerable.Repeat("a red apple on a wooden table", 20)); // far more than 75 tokens

        var body = JsonNode.Parse(await (await Tokenize(OnnxPipelineBundle.Name, new JsonObject { ["prompt"] = prompt }.ToJsonString())).Content.ReadAsStringAsync())!;

        var tokenizer = ClipTokenizer.Load(Path.Combine(bundle.Folder, OnnxPipelineLayout.TokenizerFolder));
        var ids = body["input_ids"]!.AsArray().Select(n => (long)n!).ToArray();
        Assert.Equal(tokenizer.ModelMaxLength, ids.Length);
        Assert.Equal(tokenizer.EndOfTextId, ids[^1]); // cut, with the end token kept last
        Assert.True((bool)body["prompt_truncated"]!);
        Assert.True((int)body["prompt_tokens"]! > tokenizer.ModelMaxLength);
        Assert.Equal(tokenizer.EncodeForModel("", tokenizer.ModelMaxLength).InputIds, body["negative_input_ids"]!.AsArray().Select(n => (long)n!).ToArray());
        Assert.False((bool)body["negative_prompt_truncated"]!);
    }

    [Fact]
    public async Task Tokenize_refuses_an_unknown_bundle_a_single_model_bundle_and_bad_fields_naming_what_was_wrong()
    {
        var unknown = await Tokenize("nothing", """{"prompt": "a cat"}""");
        Assert.Equal(HttpStatusCode.NotFound, unknown.StatusCode);
        Assert.Equal("There is no bundle 'nothing'.", await Detail(unknown));
        Assert.Equal(HttpStatusCode.NotFound, (await Tokenize("..%2Fsd-onnx", """{"prompt": "a cat"}""")).StatusCode);

        var single = await Tokenize(OnnxPipelineBundle.SingleModel, """{"prompt": "a cat"}""");
        Assert.Equal(HttpStatusCode.BadRequest, single.StatusCode);
        Assert.Equal("application/problem+json", single.Content.Headers.ContentType?.MediaType);
        Assert.Equal($"Bundle '{OnnxPipelineBundle.SingleModel}' is a UNet2DModel bundle, not an OnnxStableDiffusionPipeline; only a Stable Diffusion pipeline bundle has a tokenizer.",
            await Detail(single));

        foreach (var (body, expected) in new[]
                 {
                     ("{}", "'prompt' is required and must be a string (it may be empty)."),
                     ("""{"prompt": null}""", "'prompt' is required and must be a string (it may be empty)."),
                     ("""{"prompt": 42}""", "'prompt' must be a string, not 42."),
                     ("""{"prompt": "a cat", "negative_prompt": ["blurry"]}""", "'negative_prompt' must be a string, not [\"blurry\"]."),
                     ("""{"prompt": "a cat", "guidance": 7.5}""", "Unknown field(s): 'guidance'; give 'prompt' and, optionally, 'negative_prompt'."),
                     (new JsonObject { ["prompt"] = new string('a', 2001) }.ToJsonString(), "'prompt' is 2,001 characters; at most 2,000 are taken"),
                     (new JsonObject { ["prompt"] = "a cat", ["negative_prompt"] = new string('b', 5000) }.ToJsonString(), "'negative_prompt' is 5,000 characters; at most 2,000 are taken"),
                     ("""["a cat"]""", "The request body must be a JSON object."),
                     ("""{"prompt": "a cat" """, "The request body is not valid JSON"),
                 })
        {
            var refused = await Tokenize(OnnxPipelineBundle.Name, body);
            Assert.True(refused.StatusCode == HttpStatusCode.BadRequest, $"{body}: {(int)refused.StatusCode}");
            Assert.StartsWith(expected, await Detail(refused));
        }
        var text = await Tokenize(OnnxPipelineBundle.Name, "prompt=a cat", "text/plain");
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, text.StatusCode);
        Assert.Equal("The request body must be sent as Content-Type: application/json.", await Detail(text));
        var big = await Tokenize(OnnxPipelineBundle.Name, new JsonObject { ["prompt"] = new string('a', 20_000) }.ToJsonString());
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, big.StatusCode);
        var crossSite = new HttpRequestMessage(HttpMethod.Post, $"/api/exports/{OnnxPipelineBundle.Name}/tokenize")
        {
            Content = new StringContent("""{"prompt": "a cat"}""", Encoding.UTF8, "application/json"),
        };
        crossSite.Headers.Add("Origin", "https://elsewhere.example");
        Assert.Equal(HttpStatusCode.Forbidden, (await _client.SendAsync(crossSite)).StatusCode);
    }
}

/// <summary>The On-device page with an ONNX pipeline bundle: its prompt controls instead of the single-model ones, mounted by the pipeline module.</summary>
public sealed class OnDevicePipelinePageTests(OnnxPipelineBundle bundle) : MudTestContext, IClassFixture<OnnxPipelineBundle>
{
    [Fact]
    public void A_pipeline_bundle_gets_prompt_negative_prompt_guidance_steps_and_seed_and_is_mounted_by_the_pipeline_module()
    {
        Context.Services.AddSingleton(new BundleFolders(bundle.Exports));
        var module = Context.JSInterop.SetupModule("./js/ondevice-pipeline.mjs");
        module.SetupVoid("mountPipeline", _ => true);
        Context.Services.GetRequiredService<Microsoft.AspNetCore.Components.NavigationManager>().NavigateTo($"ondevice?bundle={OnnxPipelineBundle.Name}");

        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.OnDevice.OnDevice>();

        page.WaitForAssertion(() => Assert.Single(module.Invocations, i => i.Identifier == "mountPipeline"), WaitTimeout);
        Assert.Equal($"api/exports/{OnnxPipelineBundle.Name}/", module.Invocations.Single(i => i.Identifier == "mountPipeline").Arguments[1]);
        var root = page.Find(".ondevice.ondevice-pipeline");
        Assert.Equal("a photograph of an astronaut riding a horse", root.QuerySelector("textarea.ondevice-prompt")!.TextContent);
        Assert.Equal("2000", root.QuerySelector("textarea.ondevice-prompt")!.GetAttribute("maxlength"));
        Assert.Equal("", root.QuerySelector("input.ondevice-negative")!.GetAttribute("value"));
        Assert.Equal("7.5", root.QuerySelector("input.ondevice-guidance")!.GetAttribute("value"));
        Assert.Equal("25", root.QuerySelector("input.ondevice-steps")!.GetAttribute("value"));
        Assert.Equal("0", root.QuerySelector("input.ondevice-seed")!.GetAttribute("value"));
        Assert.NotNull(root.QuerySelector("progress.ondevice-progress"));
        Assert.NotNull(root.QuerySelector("button.ondevice-run[disabled]")); // enabled by the module once the pipeline loads
        Assert.Null(root.QuerySelector(".ondevice-count")); // one image per prompt: no image count
        Assert.Contains("not torch.randn", root.TextContent);
        long parameters = bundle.Export.Components.Sum(c => c.Parameters);
        Assert.Contains($"{OnnxPipelineBundle.Name} (OnnxStableDiffusionPipeline, {parameters.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)} parameters)", page.Markup);
    }

    [Fact]
    public void A_single_model_bundle_keeps_its_own_controls_and_module()
    {
        Context.Services.AddSingleton(new BundleFolders(bundle.Exports));
        var module = Context.JSInterop.SetupModule("./js/ondevice.mjs");
        module.SetupVoid("mount", _ => true);
        Context.Services.GetRequiredService<Microsoft.AspNetCore.Components.NavigationManager>().NavigateTo($"ondevice?bundle={OnnxPipelineBundle.SingleModel}");

        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.OnDevice.OnDevice>();

        page.WaitForAssertion(() => Assert.Single(module.Invocations, i => i.Identifier == "mount"), WaitTimeout);
        Assert.Empty(page.FindAll(".ondevice-pipeline"));
        Assert.Empty(page.FindAll(".ondevice-prompt"));
        Assert.NotNull(page.Find(".ondevice .ondevice-count"));
        Assert.DoesNotContain(Context.JSInterop.Invocations, i => i.Identifier == "mountPipeline");
    }
}
