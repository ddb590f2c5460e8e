using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Studio.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;

namespace DiffusionPrune.Studio.Tests;

/// <summary>The tiny real models the Studio tests run, and a Studio host over a test server.</summary>
internal static class TestModels
{
    /// <summary>A tiny U-Net config (8/16 channels, one attention level), grey 32 x 32 unless told otherwise.</summary>
    public static string TinyUNetConfig(int sampleSize = 32) => $$"""
        {"_class_name": "UNet2DModel", "sample_size": {{sampleSize}}, "in_channels": 1, "out_channels": 1,
         "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
         "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
        """;

    /// <summary>Saves a freshly initialised tiny U-Net (with a scheduler config) in <paramref name="folder"/>; returns its parameter count.</summary>
    public static long SaveTinyUNet(string folder, int sampleSize = 32, bool scheduler = true)
    {
        using var model = ModelFamilies.Create(ConfigJson.Parse(TinyUNetConfig(sampleSize)));
        DiffusersModelLoader.Save(model, folder);
        if (scheduler) File.WriteAllText(Path.Combine(folder, ModelFolder.SchedulerConfig), ModelFolder.DefaultSchedulerJson(classConditional: false));
        return model.ParameterCount();
    }

    /// <summary>
    /// Starts the Studio's services and JSON API on a test server, with samples under <paramref name="root"/>, outputs in
    /// <c>root/out</c> and the given extra settings (section <c>Studio</c>).
    /// </summary>
    public static async Task<WebApplication> StartStudioAsync(string root, IReadOnlyDictionary<string, string?>? settings = null)
    {
        var builder = WebApplication.CreateBuilder();
        builder.WebHost.UseTestServer();
        builder.Logging.ClearProviders();
        var all = new Dictionary<string, string?>
        {
            ["Studio:SamplesRoot"] = root,
            ["Studio:OutputRoot"] = Path.Combine(root, "out"),
        };
        foreach (var (key, value) in settings ?? new Dictionary<string, string?>()) all[key] = value;
        builder.Configuration.AddInMemoryCollection(all);
        builder.Services.AddStudioServices(builder.Configuration);
        var app = builder.Build();
        app.MapStudioApi();
        await app.StartAsync();
        return app;
    }

    /// <summary>Posts a job to <c>/api/jobs</c>, asserts it was accepted and waits until it has finished; returns its last description.</summary>
    public static async Task<JsonNode> RunJobAsync(HttpClient client, string json, TimeSpan timeout)
    {
        var response = await client.PostAsync("/api/jobs", new StringContent(json, Encoding.UTF8, "application/json"));
        Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"{json}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        string id = (string)JsonNode.Parse(await response.Content.ReadAsStringAsync())!["id"]!;
        JsonNode job;
        var deadline = DateTime.UtcNow + timeout;
        do
        {
            await Task.Delay(200);
            job = JsonNode.Parse(await client.GetStringAsync($"/api/jobs/{id}"))!;
        }
        while ((string?)job["status"] is "queued" or "running" && DateTime.UtcNow < deadline);
        return job;
    }

    /// <summary>Asserts that posting <paramref name="json"/> to <c>/api/jobs</c> is a 400 whose detail contains <paramref name="expected"/>.</summary>
    public static async Task AssertRefusedAsync(HttpClient client, string json, string expected)
    {
        var refused = await client.PostAsync("/api/jobs", new StringContent(json, Encoding.UTF8, "application/json"));
        Assert.True(refused.StatusCode == HttpStatusCode.BadRequest, $"{json}: {(int)refused.StatusCode}");
        Assert.Contains(expected, (string)JsonNode.Parse(await refused.Content.ReadAsStringAsync())!["detail"]!);
    }
}
