using System.IO.Compression;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Studio.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.TestHost;

namespace DiffusionPrune.Studio.Tests;

/// <summary>
/// The JSON API over a real Studio host (TestServer, the Studio's own services and background queue): models, a prune
/// job run to the end, bad input answered with 400/404/413 problem details, and zip uploads with their limits.
/// </summary>
public sealed class StudioApiTests : IAsyncLifetime
{
    private readonly TempSamplesFolder _samples = new();
    private WebApplication _app = null!;
    private HttpClient _client = null!;
    private long _parameters;

    private string Uploads => Path.Combine(_samples.Root, "out", StudioOptions.UploadedFolder);

    public async Task InitializeAsync()
    {
        _parameters = TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny-unet"));
        _app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?>
        {
            ["Studio:MaxJsonBodyBytes"] = "4096",
            ["Studio:MaxUploadBytes"] = (2 << 20).ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Studio:MaxUnpackedBytes"] = (4 << 20).ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["Studio:MaxZipEntries"] = "8",
            ["Studio:MaxZipPathDepth"] = "3",
        });
        _client = _app.GetTestClient();
    }

    public async Task DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        _samples.Dispose();
    }

    private async Task<JsonNode> JsonOf(HttpResponseMessage response) => JsonNode.Parse(await response.Content.ReadAsStringAsync())!;

    private Task<HttpResponseMessage> PostJob(string json) =>
        _client.PostAsync("/api/jobs", new StringContent(json, Encoding.UTF8, "application/json"));

    [Fact]
    public async Task Models_are_listed_with_their_class_and_parameters_from_the_config()
    {
        var models = (await JsonOf(await _client.GetAsync("/api/models"))).AsArray();
        var tiny = Assert.Single(models, m => (string?)m!["name"] == "tiny-unet")!;
        Assert.Equal("UNet2DModel", (string?)tiny["class_name"]);
        Assert.Equal(_parameters, (long)tiny["parameters"]!);
        Assert.Null(tiny["problem"]);
    }

    [Fact]
    public async Task A_prune_job_runs_to_the_end_and_its_output_model_is_listed()
    {
        var response = await PostJob("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0.2}""");
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        string id = (string)(await JsonOf(response))["id"]!;

        JsonNode job;
        var deadline = DateTime.UtcNow.AddMinutes(3);
        do
        {
            await Task.Delay(200);
            job = await JsonOf(await _client.GetAsync($"/api/jobs/{id}"));
        }
        while ((string?)job["status"] is "queued" or "running" && DateTime.UtcNow < deadline);
        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        Assert.Equal("prune", (string?)job["kind"]);
        Assert.Equal(1.0, (double)job["progress"]!);
        string output = (string)job["result"]!["output_model"]!;
        Assert.StartsWith("pruned/tiny-unet-magnitude-20-", output);
        var models = (await JsonOf(await _client.GetAsync("/api/models"))).AsArray();
        var pruned = Assert.Single(models, m => (string?)m!["name"] == output)!;
        Assert.True((long)pruned["parameters"]! < _parameters);

        Assert.Equal(HttpStatusCode.Conflict, (await _client.DeleteAsync($"/api/jobs/{id}")).StatusCode); // finished: nothing to cancel
    }

    [Theory]
    [InlineData("""{"kind": "prune", "model": "no-such-model", "method": "magnitude", "target_params": 0.2}""", "no model named 'no-such-model'")]
    [InlineData("""{"kind": "prune", "model": "../models/tiny-unet", "method": "magnitude", "target_params": 0.2}""", "not a path")]
    [InlineData("""{"kind": "prune", "model": "/etc/passwd", "method": "magnitude", "target_params": 0.2}""", "not a path")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 1.5}""", "strictly between 0 and 1")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0}""", "strictly between 0 and 1")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0.2, "colour": "red"}""", "Unknown field(s): 'colour'")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "sharpen", "target_params": 0.2}""", "'method' must be one of")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": "much"}""", "'target_params' must be a number")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0.2, "iterations": 0}""", "'iterations' must be between 1")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0.2, "budget": "macs"}""", "apply to the layer methods")]
    [InlineData("""{"kind": "launch", "model": "tiny-unet"}""", "'kind' must be prune, distill, compare, export, sample, evaluate or batch")]
    [InlineData("""{"kind": "distill", "student": "tiny-unet", "teacher": "tiny-unet"}""", "another model")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0.2, "budget": "params,macs"}""", "'budget' must be one of")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0.2, "budget": "1"}""", "'budget' must be one of")]
    [InlineData("""{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0.2, "target_params": 0.9}""", "not valid JSON")]
    [InlineData("""[1, 2]""", "must be a JSON object")]
    [InlineData("""{"kind": "prune", """, "not valid JSON")]
    public async Task Bad_input_gets_a_400_problem_naming_the_field(string body, string expected)
    {
        var response = await PostJob(body);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = await JsonOf(response);
        Assert.Equal(400, (int)problem["status"]!);
        Assert.Contains(expected, (string)problem["detail"]!);
    }

    [Fact]
    public async Task Unknown_ids_get_404_and_oversized_bodies_413()
    {
        Assert.Equal(HttpStatusCode.NotFound, (await _client.GetAsync($"/api/jobs/{Guid.NewGuid()}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await _client.GetAsync("/api/jobs/not-a-guid")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await _client.DeleteAsync($"/api/jobs/{Guid.NewGuid()}")).StatusCode);

        string padding = new('x', 5000);
        var response = await PostJob($$"""{"kind": "prune", "model": "{{padding}}"}""");
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        Assert.Contains("Studio:MaxJsonBodyBytes", (string)(await JsonOf(response))["detail"]!);

        // the same without a Content-Length: counted while reading
        var chunked = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes($$"""{"kind": "{{padding}}"}""")));
        chunked.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        var request = new HttpRequestMessage(HttpMethod.Post, "/api/jobs") { Content = chunked };
        request.Headers.TransferEncodingChunked = true;
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, (await _client.SendAsync(request)).StatusCode);
    }

    [Fact]
    public async Task Writes_from_another_site_s_page_or_without_a_json_body_are_refused()
    {
        const string body = """{"kind": "prune", "model": "tiny-unet", "method": "magnitude", "target_params": 0.2, "iterations": 0}""";
        // an HTML form can post text/plain across sites; the API takes application/json only
        var form = await _client.PostAsync("/api/jobs", new StringContent(body, Encoding.UTF8, "text/plain"));
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, form.StatusCode);
        Assert.Contains("application/json", (string)(await JsonOf(form))["detail"]!);

        HttpRequestMessage From(string origin, HttpMethod method, string path)
        {
            var request = new HttpRequestMessage(method, path) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            request.Headers.Add("Origin", origin);
            return request;
        }
        foreach (var (method, path) in new[] { (HttpMethod.Post, "/api/jobs"), (HttpMethod.Delete, $"/api/jobs/{Guid.NewGuid()}"),
                                               (HttpMethod.Post, $"/api/jobs/{Guid.NewGuid()}/resume"), (HttpMethod.Put, "/api/models/x") })
        {
            var foreign = await _client.SendAsync(From("http://evil.example", method, path));
            Assert.True(HttpStatusCode.Forbidden == foreign.StatusCode, $"{method} {path}: {(int)foreign.StatusCode}");
        }
        // the Studio's own origin, and reads from anywhere, go through (here to the 400 of iterations 0)
        Assert.Equal(HttpStatusCode.BadRequest, (await _client.SendAsync(From("http://localhost", HttpMethod.Post, "/api/jobs"))).StatusCode);
        var read = new HttpRequestMessage(HttpMethod.Get, "/api/models");
        read.Headers.Add("Origin", "http://evil.example");
        Assert.Equal(HttpStatusCode.OK, (await _client.SendAsync(read)).StatusCode);
    }

    /// <summary>A zip of the tiny model's folder, with optional extra entries (name, bytes, unix mode).</summary>
    private byte[] ModelZip(string? inFolder = "tiny", IEnumerable<(string Name, byte[] Bytes, int? Mode)>? extra = null, bool corruptWeights = false)
    {
        string source = Path.Combine(_samples.ModelsRoot, "tiny-unet");
        using var buffer = new MemoryStream();
        using (var zip = new ZipArchive(buffer, ZipArchiveMode.Create, leaveOpen: true))
        {
            foreach (var file in Directory.GetFiles(source))
            {
                string name = inFolder is null ? Path.GetFileName(file) : $"{inFolder}/{Path.GetFileName(file)}";
                var bytes = File.ReadAllBytes(file);
                if (corruptWeights && name.EndsWith(".safetensors", StringComparison.Ordinal)) bytes = bytes[..(bytes.Length / 2)];
                using var entry = zip.CreateEntry(name).Open();
                entry.Write(bytes);
            }
            foreach (var (name, bytes, mode) in extra ?? [])
            {
                var entry = zip.CreateEntry(name);
                if (mode is int m) entry.ExternalAttributes = m << 16;
                using var stream = entry.Open();
                stream.Write(bytes);
            }
        }
        return buffer.ToArray();
    }

    /// <summary>The model's zip plus an entry whose deflate data starts with a reserved block type: unreadable past its header.</summary>
    private byte[] DamagedDeflate()
    {
        var text = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("a model card that compresses well. ", 200)));
        var zip = ModelZip(extra: [("tiny/README.md", text, null)]);
        var name = Encoding.UTF8.GetBytes("tiny/README.md");
        // the local header (30 bytes + name + extra field) comes first: find it by signature and name
        for (int i = 0; i + 30 + name.Length < zip.Length; i++)
            if (zip[i] == 0x50 && zip[i + 1] == 0x4b && zip[i + 2] == 3 && zip[i + 3] == 4 && zip.AsSpan(i + 30, name.Length).SequenceEqual(name))
            {
                int data = i + 30 + name.Length + BitConverter.ToUInt16(zip, i + 28);
                zip[data] = 0xFF; // BFINAL 1, BTYPE 11: reserved, refused by every inflater
                return zip;
            }
        throw new InvalidOperationException("the entry was not found");
    }

    private Task<HttpResponseMessage> Upload(string name, byte[] zip) =>
        _client.PutAsync($"/api/models/{name}", new ByteArrayContent(zip) { Headers = { ContentType = new MediaTypeHeaderValue("application/zip") } });

    private void AssertNothingLeftBehind(params string[] accepted)
    {
        var left = Directory.Exists(Uploads) ? Directory.GetFileSystemEntries(Uploads).Select(Path.GetFileName).Order().ToArray() : [];
        Assert.Equal(accepted.Order().ToArray(), left);
    }

    [Fact]
    public async Task An_uploaded_zip_is_validated_by_the_strict_loader_and_listed()
    {
        var response = await Upload("my-model", ModelZip());
        Assert.Equal(HttpStatusCode.Created, response.StatusCode);
        Assert.Equal("uploaded/my-model", (string)(await JsonOf(response))["name"]!);
        var models = (await JsonOf(await _client.GetAsync("/api/models"))).AsArray();
        Assert.Equal(_parameters, (long)Assert.Single(models, m => (string?)m!["name"] == "uploaded/my-model")!["parameters"]!);

        // the files at the zip's top level work too; a taken name is a conflict
        Assert.Equal(HttpStatusCode.Created, (await Upload("flat", ModelZip(inFolder: null))).StatusCode);
        Assert.Equal(HttpStatusCode.Conflict, (await Upload("flat", ModelZip())).StatusCode);
        AssertNothingLeftBehind("flat", "my-model");

        // the model is prunable by its listed name
        var job = await PostJob("""{"kind": "prune", "model": "uploaded/my-model", "method": "random", "target_params": 0.1}""");
        Assert.Equal(HttpStatusCode.Accepted, job.StatusCode);
    }

    [Fact]
    public async Task Uploads_over_a_limit_or_escaping_the_folder_are_refused_and_leave_nothing()
    {
        var zeros = new byte[5 << 20]; // compresses to a few KiB, unpacks past the 4 MiB limit
        var random = new byte[3 << 20];
        new Random(1).NextBytes(random);
        var cases = new (string Name, byte[] Zip, HttpStatusCode Status, string Expected)[]
        {
            ("big", random, HttpStatusCode.RequestEntityTooLarge, "Studio:MaxUploadBytes"),
            ("bomb", ModelZip(extra: [("tiny/zeros.bin", zeros, null)]), HttpStatusCode.BadRequest, "Studio:MaxUnpackedBytes"),
            ("many", ModelZip(extra: Enumerable.Range(0, 8).Select(i => ($"tiny/f{i}.txt", new byte[1], (int?)null))), HttpStatusCode.BadRequest, "Studio:MaxZipEntries"),
            ("deep", ModelZip(extra: [("tiny/a/b/c.txt", new byte[1], null)]), HttpStatusCode.BadRequest, "Studio:MaxZipPathDepth"),
            ("slip", ModelZip(extra: [("../evil.txt", new byte[1], null)]), HttpStatusCode.BadRequest, "inside the model folder"),
            ("slip2", ModelZip(extra: [("tiny/../../evil.txt", new byte[1], null)]), HttpStatusCode.BadRequest, "inside the model folder"),
            ("absolute", ModelZip(extra: [("/tmp/evil.txt", new byte[1], null)]), HttpStatusCode.BadRequest, "absolute or non-portable"),
            ("backslash", ModelZip(extra: [("tiny\\..\\evil.txt", new byte[1], null)]), HttpStatusCode.BadRequest, "absolute or non-portable"),
            ("link", ModelZip(extra: [("tiny/link", Encoding.UTF8.GetBytes("/etc/passwd"), 0xA1FF)]), HttpStatusCode.BadRequest, "symbolic link"),
            ("twice", ModelZip(extra: [("tiny/config.json", Encoding.UTF8.GetBytes("{}"), null)]), HttpStatusCode.BadRequest, "holds 'tiny/config.json' twice"),
            ("damaged", DamagedDeflate(), HttpStatusCode.BadRequest, "cannot be unpacked"),
            ("broken", ModelZip(corruptWeights: true), HttpStatusCode.BadRequest, "does not load"),
            ("notzip", Encoding.UTF8.GetBytes("this is not a zip"), HttpStatusCode.BadRequest, "not a zip file"),
            ("empty", [], HttpStatusCode.BadRequest, "empty"),
            ("noconfig", ModelZip(inFolder: "a/b"), HttpStatusCode.BadRequest, "no config.json"),
            ("a..b", ModelZip(), HttpStatusCode.BadRequest, "cannot name a model"),
            (".hidden", ModelZip(), HttpStatusCode.BadRequest, "cannot name a model"),
        };
        foreach (var (name, zip, status, expected) in cases)
        {
            var response = await Upload(Uri.EscapeDataString(name), zip);
            string detail = response.Content.Headers.ContentType?.MediaType == "application/problem+json" ? (string)(await JsonOf(response))["detail"]! : await response.Content.ReadAsStringAsync();
            Assert.True(status == response.StatusCode, $"{name}: {(int)response.StatusCode} {detail}");
            Assert.Contains(expected, detail);
        }
        AssertNothingLeftBehind();
        Assert.False(File.Exists(Path.Combine(_samples.Root, "out", "evil.txt")));
        Assert.False(File.Exists(Path.Combine(_samples.Root, "evil.txt")));

        // an upload with no Content-Length is counted while it is read
        var chunked = new StreamContent(new MemoryStream(random));
        var request = new HttpRequestMessage(HttpMethod.Put, "/api/models/chunked") { Content = chunked };
        request.Headers.TransferEncodingChunked = true;
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, (await _client.SendAsync(request)).StatusCode);
        AssertNothingLeftBehind();
    }

    [Fact]
    public void A_job_is_described_with_the_api_s_status_names()
    {
        var state = new Jobs.JobStateService();
        var job = new Jobs.PruneJob(new DiffusionPrune.Pruning.PruneRequest { ModelPath = "m", Method = "magnitude", TargetParams = 0.2, OutputPath = "/x/out/pruned/m-magnitude-20" });
        state.Track(job);
        state.MarkCanceled(job.Id);
        var described = StudioApi.Describe(state.Find(job.Id)!);
        Assert.Equal("cancelled", (string?)described["status"]);
        Assert.Equal("prune", (string?)described["kind"]);
        Assert.Null(described["result"]);
    }
}
