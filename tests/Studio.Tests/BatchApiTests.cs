using System.Net;
using System.Text.Json.Nodes;
using DiffusionPrune.Studio.Batch;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using BatchResultPage = DiffusionPrune.Studio.Components.Pages.Batch.BatchResult;

namespace DiffusionPrune.Studio.Tests;

/// <summary>A batch job over the JSON API: refusals, then a real tiny sweep, its summary served and shown.</summary>
public sealed class BatchApiTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public async Task A_tiny_batch_runs_and_its_summary_is_listed_served_and_shown()
    {
        TorchSharp.torch.manual_seed(3);
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny"));
        await using var app = await TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });
        var client = app.GetTestClient();
        string batches = Path.Combine(_samples.Root, "out", "batches");

        const string good = """ "models": ["tiny"], "methods": ["magnitude", "random"], "targets": [0.2] """;
        foreach (var (body, expected) in new[]
        {
            ("""{"kind": "batch", "models": ["nope"], "methods": ["magnitude"], "targets": [0.2]}""", "no model named 'nope'"),
            ("""{"kind": "batch", "models": ["../models/tiny"], "methods": ["magnitude"], "targets": [0.2]}""", "not a path"),
            ("""{"kind": "batch", "models": ["/tmp/tiny"], "methods": ["magnitude"], "targets": [0.2]}""", "not a path"),
            ("""{"kind": "batch", "models": ["models\\tiny"], "methods": ["magnitude"], "targets": [0.2]}""", "not a path"),
            ("""{"kind": "batch", "models": ["tiny", "tiny"], "methods": ["magnitude"], "targets": [0.2]}""", "lists a model twice"),
            ("""{"kind": "batch", "models": ["tiny"], "methods": ["magnitude"], "targets": [1.5]}""", "strictly between 0 and 1, not 1.5"),
            ("""{"kind": "batch", "models": ["tiny"], "methods": ["magnitude"], "targets": [0]}""", "strictly between 0 and 1, not 0"),
            ("""{"kind": "batch", "models": ["tiny"], "methods": ["magnitude"], "targets": "0.2"}""", "'targets' is required and must be a list of numbers"),
            ("""{"kind": "batch", "models": ["tiny"], "methods": ["nope"], "targets": [0.2]}""", "'methods' must be from"),
            ("""{"kind": "batch", "models": ["tiny"], "methods": ["magnitude"], "targets": [0.2, 0.2]}""", "lists 0.2 twice"),
            ("{\"kind\": \"batch\", " + good + ", \"output\": \"/tmp/x\"}", "Unknown field(s): 'output'"),
            ("{\"kind\": \"batch\", " + good + ", \"formats\": \"safetensors\"}", "must include \"onnx\""),
            ("{\"kind\": \"batch\", " + good + ", \"latency_batches\": [0]}", "'latency_batches'"),
            ("{\"kind\": \"batch\", " + good + ", \"eval_samples\": 1}", "'eval_samples' must be between 2"),
        })
            await TestModels.AssertRefusedAsync(client, body, expected);
        Assert.False(Directory.Exists(batches) && Directory.EnumerateFileSystemEntries(batches).Any()); // a refused plan writes nothing
        Assert.Equal(HttpStatusCode.NotFound, (await client.GetAsync("/api/batches/nothing/summary.md")).StatusCode);

        // the real thing, as small as the evaluator allows: a handful of images and steps, no ONNX, no timing
        var job = await TestModels.RunJobAsync(client, "{\"kind\": \"batch\", " + good + """
            , "prune_steps": 1, "calibration": 2, "eval_samples": 4, "eval_steps": 1, "formats": "safetensors", "latency": false}
            """, TimeSpan.FromMinutes(4));
        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        Assert.Equal("batch", (string?)job["kind"]);
        var result = job["result"]!;
        string name = (string)result["batch"]!;
        Assert.Equal($"/batch/{name}", (string?)result["url"]);
        Assert.Equal($"/api/batches/{name}/summary.md", (string?)result["summary_md"]);
        Assert.Equal($"/api/batches/{name}/pareto.png", (string?)result["pareto"]);
        Assert.Contains("3 item(s) run, 0 skipped as finished earlier, 0 failed; 3 of 3 items finished", (string)result["summary"]!);
        string folder = Path.Combine(batches, name);
        Assert.True(File.Exists(Path.Combine(folder, "summary.md")));
        Assert.True(File.Exists(Path.Combine(folder, "pareto.png")));
        // evaluated in ONNX Runtime, the Studio's default, from bundles exported into the batch's own cache
        Assert.Equal("onnx", (string?)JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "plan.json")))!["eval"]!["runtime"]);
        var plan = DiffusionPrune.Batch.BatchPlan.Load(Path.Combine(folder, "plan.json"));
        Assert.All(plan.Items(), item => Assert.Equal("onnx (CPU)", (string?)DiffusionPrune.Batch.BatchRunner.ReadItem(plan.FolderOf(item))!["eval"]!["runtime"]));

        var listed = Assert.Single(JsonNode.Parse(await client.GetStringAsync("/api/batches"))!.AsArray())!;
        Assert.Equal(name, (string?)listed["name"]);
        Assert.Equal(3, (int)listed["finished"]!);
        var markdown = await client.GetAsync((string)result["summary_md"]!);
        Assert.Equal("text/markdown", markdown.Content.Headers.ContentType?.MediaType);
        Assert.Contains("| tiny | magnitude | 20% |", await markdown.Content.ReadAsStringAsync());
        var csv = await client.GetAsync($"/api/batches/{name}/summary.csv?download=1");
        Assert.Equal("text/csv", csv.Content.Headers.ContentType?.MediaType);
        Assert.Equal($"{name}-summary.csv", csv.Content.Headers.ContentDisposition?.FileNameStar ?? csv.Content.Headers.ContentDisposition?.FileName);
        var png = await client.GetAsync((string)result["pareto"]!);
        Assert.Equal("image/png", png.Content.Headers.ContentType?.MediaType);
        foreach (var path in new[] { $"/api/batches/{name}/..%2F..%2Fdata%2Fjobs.db", "/api/batches/..%2Fdata/jobs.db", $"/api/batches/{name}/tiny",
                                     $"/api/batches/{name}/nothing.png", "/api/batches/nothing/summary.md", $"/api/batches/{name}/tiny%2Foriginal%2Fitem.json" })
            Assert.True((await client.GetAsync(path)).StatusCode == HttpStatusCode.NotFound, path);

        // the summary page shows the same rows
        Context.Services.AddSingleton(app.Services.GetRequiredService<BatchFolders>());
        var page = Context.Render<BatchResultPage>(p => p.Add(x => x.Name, name));
        var rows = page.FindAll(".batch-table tbody tr").Select(r => r.TextContent).ToList();
        Assert.Equal(3, rows.Count);
        Assert.Contains("original", rows[0]);
        Assert.Contains("magnitude", rows[1]);
        Assert.Contains("random", rows[2]);
        Assert.All(rows, r => Assert.Matches(@"\d+\.\d{3} \[\d+\.\d{3}, \d+\.\d{3}\]", r)); // FID-proxy with its interval
        Assert.Empty(page.FindAll(".batch-failed"));
        Assert.Empty(page.FindAll(".batch-unfinished"));
    }
}
