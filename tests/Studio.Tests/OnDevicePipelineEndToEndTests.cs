using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Inference;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Studio.Hosting;
using Microsoft.Playwright;
using static TorchSharp.torch;

namespace DiffusionPrune.Studio.Tests;

/// <summary>
/// An exported Stable Diffusion ONNX pipeline (sd-pipeline-small) run in Debian's chromium on the On-device page, with
/// ONNX Runtime Web (WebAssembly: the browser runs with --disable-gpu), against the core: the page's DDIM
/// (wwwroot/js/ondevice-pipeline.mjs) holds to <see cref="ArrayDDIMScheduler"/> exactly, and from the same prompt ids and
/// noise the page's latents and image match the core's <see cref="OnnxStableDiffusionPipeline"/> within float error
/// (the measured figure goes to <c>out/e2e/6-on-device-pipeline-parity.txt</c>). Then a user generates an image with the
/// page's own controls (screenshot <c>out/e2e/6-on-device-pipeline.png</c>); a pipeline naming another scheduler runs DDIM
/// on its schedule and says so, and one whose scheduler the page cannot run says why.
/// </summary>
[Collection(nameof(EndToEndCollection))]
public sealed class OnDevicePipelineEndToEndTests(OnnxPipelineBundle bundle) : IClassFixture<OnnxPipelineBundle>, IAsyncLifetime
{
    /// <summary>
    /// On the [0, 1] image and on the latents: ONNX Runtime Web's WebAssembly kernels against native ONNX Runtime's (other
    /// summation orders, other GEMM blocking) over 4 guided steps and the VAE; the schedulers themselves agree bit for bit.
    /// </summary>
    private const double Tolerance = 1e-4;

    private const int Steps = 4;

    private readonly StringBuilder _serverLog = new();
    private Process? _server;
    private string _url = "";
    private readonly string _shots = Path.Combine(RepositoryLayout.FindRoot()!, "out", "e2e");

    public async Task InitializeAsync()
    {
        string root = RepositoryLayout.FindRoot() ?? throw new InvalidOperationException("The repository root (Diffusion.sln) was not found.");
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }
        _url = $"http://127.0.0.1:{port}/";
        var start = new ProcessStartInfo("dotnet") { WorkingDirectory = root, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[]
                 {
                     Path.Combine(AppContext.BaseDirectory, "Studio.dll"), "--urls", _url.TrimEnd('/'),
                     $"--Studio:SamplesRoot={bundle.Root}", $"--Studio:OutputRoot={Path.Combine(bundle.Root, "out")}",
                     $"--Studio:DataFolder={Path.Combine(bundle.Root, "data-e2e-" + Guid.NewGuid().ToString("N"))}",
                 })
            start.ArgumentList.Add(arg);
        _server = Process.Start(start)!;
        _server.OutputDataReceived += (_, e) => { lock (_serverLog) _serverLog.AppendLine(e.Data); };
        _server.ErrorDataReceived += (_, e) => { lock (_serverLog) _serverLog.AppendLine(e.Data); };
        _server.BeginOutputReadLine();
        _server.BeginErrorReadLine();
        using var http = new HttpClient();
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (true)
        {
            try
            {
                if ((await http.GetAsync(_url + "api/exports")).IsSuccessStatusCode) break;
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline && !_server.HasExited)
            {
                await Task.Delay(250);
                continue;
            }
            throw new InvalidOperationException($"The Studio did not start:\n{Log()}");
        }
        Directory.CreateDirectory(_shots);
    }

    public Task DisposeAsync()
    {
        if (_server is { HasExited: false }) _server.Kill(entireProcessTree: true);
        _server?.WaitForExit(10_000);
        _server?.Dispose();
        return Task.CompletedTask;
    }

    private string Log()
    {
        lock (_serverLog) return _serverLog.ToString();
    }

    /// <summary>A zipped copy of the exported pipeline named <paramref name="name"/> beside it, its scheduler config and model_index.json edited.</summary>
    private void CopyBundle(string name, Action<JsonObject> editScheduler, Action<JsonObject> editIndex)
    {
        string target = Path.Combine(bundle.Exports, name);
        if (Directory.Exists(target)) Directory.Delete(target, recursive: true);
        foreach (var file in Directory.EnumerateFiles(bundle.Folder, "*", SearchOption.AllDirectories))
        {
            string destination = Path.Combine(target, Path.GetRelativePath(bundle.Folder, file));
            Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
            File.Copy(file, destination);
        }
        foreach (var (file, edit) in new[] { (Path.Combine(target, "scheduler", "scheduler_config.json"), editScheduler), (Path.Combine(target, "model_index.json"), editIndex) })
        {
            var json = JsonNode.Parse(File.ReadAllText(file))!.AsObject();
            edit(json);
            File.WriteAllText(file, json.ToJsonString());
        }
        File.Delete(Export.BundleFolders.ZipOf(target));
        System.IO.Compression.ZipFile.CreateFromDirectory(target, Export.BundleFolders.ZipOf(target));
    }

    private static double[] Doubles(JsonNode? array) => array!.AsArray().Select(n => (double)n!).ToArray();

    /// <summary>The page's DDIM (ddimTimesteps, alphas and steps) against <see cref="ArrayDDIMScheduler"/>: equal, not merely close.</summary>
    private static async Task AssertPageSchedulerIsTheArraySchedulers(IPage page)
    {
        // every step count for every spacing
        var timesteps = JsonNode.Parse(await page.EvaluateAsync<string>(
            "async () => { const m = await import('./js/ondevice-pipeline.mjs'); return JSON.stringify(['leading', 'trailing', 'linspace'].map(spacing => " +
            "Array.from({ length: 1000 }, (_, i) => m.ddimTimesteps(m.ddimConfig({ timestep_spacing: spacing, steps_offset: spacing === 'leading' ? 1 : 0 }), i + 1)))); }"))!;
        string[] spacings = ["leading", "trailing", "linspace"];
        for (int s = 0; s < spacings.Length; s++)
            for (int steps = 1; steps <= 1000; steps++)
            {
                var scheduler = new ArrayDDIMScheduler(new ArrayDDIMConfig { TimestepSpacing = spacings[s], StepsOffset = spacings[s] == "leading" ? 1 : 0 });
                scheduler.SetTimesteps(steps);
                Assert.True(scheduler.Timesteps.SequenceEqual(timesteps[s]![steps - 1]!.AsArray().Select(n => (long)n!)), $"{spacings[s]}, {steps} steps");
            }

        // alphas and 5 steps from fixed arrays, for each beta schedule, prediction type and final alpha
        var random = new Random(3);
        float[] Values(int n) => Enumerable.Range(0, n).Select(_ => (float)(random.NextDouble() * 4 - 2)).ToArray();
        var configs = new JsonObject[]
        {
            new() { ["beta_schedule"] = "scaled_linear", ["beta_start"] = 0.00085, ["beta_end"] = 0.012, ["clip_sample"] = false, ["set_alpha_to_one"] = false, ["steps_offset"] = 1 },
            new() { ["beta_schedule"] = "linear", ["prediction_type"] = "v_prediction", ["timestep_spacing"] = "trailing", ["clip_sample"] = true },
            new() { ["beta_schedule"] = "squaredcos_cap_v2", ["prediction_type"] = "sample", ["timestep_spacing"] = "linspace", ["clip_sample_range"] = 0.5 },
            new() { ["beta_schedule"] = "linear", ["rescale_betas_zero_snr"] = true, ["prediction_type"] = "v_prediction", ["timestep_spacing"] = "trailing", ["clip_sample"] = false },
        };
        foreach (var config in configs)
        {
            float[] start = Values(64);
            float[][] outputs = Enumerable.Range(0, 5).Select(_ => Values(64)).ToArray();
            var inPage = JsonNode.Parse(await page.EvaluateAsync<string>(
                "async ([config, start, outputs]) => { const m = await import('./js/ondevice-pipeline.mjs'); const s = m.ddimScheduler(m.ddimConfig(JSON.parse(config))); " +
                "const ts = s.setTimesteps(5); let x = Float32Array.from(start); ts.forEach((t, i) => { x = s.step(Float32Array.from(outputs[i]), t, x); }); " +
                "return JSON.stringify({ alphas: Array.from(s.alphasCumprod), x: Array.from(x), ts }); }",
                new object[] { config.ToJsonString(), start.Select(v => (double)v).ToArray(), outputs.Select(o => o.Select(v => (double)v).ToArray()).ToArray() }))!;
            var scheduler = new ArrayDDIMScheduler(ArrayDDIMScheduler.ParseConfig(config.ToJsonString()));
            scheduler.SetTimesteps(5);
            float[] x = start;
            var ts = scheduler.Timesteps;
            for (int i = 0; i < ts.Length; i++) x = scheduler.Step(outputs[i], ts[i], x);
            Assert.Equal(ts, inPage["ts"]!.AsArray().Select(n => (long)n!).ToArray());
            Assert.Equal(scheduler.AlphasCumprod, Doubles(inPage["alphas"]).Select(v => (float)v).ToArray());
            Assert.Equal(x, Doubles(inPage["x"]).Select(v => (float)v).ToArray());
        }
    }

    [Fact]
    public async Task The_page_generates_the_core_onnx_pipelines_image_from_the_same_ids_and_noise_and_a_user_generates_one_from_a_prompt()
    {
        string chromium = Environment.GetEnvironmentVariable("DPRUNE_CHROMIUM") ?? "/usr/bin/chromium";
        Assert.True(File.Exists(chromium), $"Chromium is not at {chromium}: apt-get install -y chromium (.ci/run does), or set DPRUNE_CHROMIUM.");
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new()
        {
            ExecutablePath = chromium, Headless = true,
            Args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
        });
        var context = await browser.NewContextAsync(new() { ViewportSize = new() { Width = 1400, Height = 1000 } });
        var page = await context.NewPageAsync();
        page.SetDefaultTimeout(60_000);
        try
        {
            // 1. the pipeline bundle loads in the page
            await page.GotoAsync(_url + $"ondevice?bundle={OnnxPipelineBundle.Name}");
            await page.WaitForSelectorAsync(".ondevice[data-ready='true'], .ondevice[data-failed='true']", new() { Timeout = 180_000 });
            string ready = await page.InnerTextAsync(".ondevice-status");
            Assert.StartsWith("Ready: OnnxStableDiffusionPipeline, latents 4 x 16 x 16, DDIM, on WebAssembly.", ready);

            // 2. the page's scheduler is the array scheduler's
            await AssertPageSchedulerIsTheArraySchedulers(page);

            // 3. from the same ids and noise, the core's image: guided with a negative prompt, and unguided (the prompt branch alone)
            var report = new StringBuilder();
            using var core = OnnxStableDiffusionPipeline.Open(bundle.Folder, "cpu");
            foreach (var (prompt, negative, guidance) in new[] { ("a photograph of an astronaut riding a horse", "blurry", 7.5), ("a lighthouse by the sea", "", 1.0) })
            {
                using var noise = randn([2, 4, 16, 16], generator: new Generator(7, CPU));
                var inBrowser = JsonNode.Parse(await page.EvaluateAsync<string>(
                    "async ([prompt, negative, noise, steps, guidance]) => { const ids = await window.dprune.tokenize(prompt, negative); " +
                    "const r = await window.dprune.generate({ inputIds: ids.input_ids, negativeInputIds: ids.negative_input_ids, noise, shape: [2, 4, 16, 16], steps, guidance }); " +
                    "return JSON.stringify({ ids: ids.input_ids, negativeIds: ids.negative_input_ids, latents: r.latents, image: r.image, imageShape: r.imageShape, timesteps: r.timesteps }); }",
                    new object[] { prompt, negative, noise.data<float>().ToArray().Select(v => (double)v).ToArray(), Steps, guidance }))!;

                // the ids are the core tokenizer's, the run is the core's
                Assert.Equal(core.Tokenizer.EncodeForModel(prompt, core.Tokenizer.ModelMaxLength).InputIds, inBrowser["ids"]!.AsArray().Select(n => (long)n!).ToArray());
                Assert.Equal(core.Tokenizer.EncodeForModel(negative, core.Tokenizer.ModelMaxLength).InputIds, inBrowser["negativeIds"]!.AsArray().Select(n => (long)n!).ToArray());
                using var embeddings = core.EncodePrompt(prompt, negative, 2, classifierFreeGuidance: guidance > 1.0);
                using var expected = core.Generate(embeddings, noise, new SampleOptions(Steps, guidance));
                Assert.Equal(expected.Timesteps, inBrowser["timesteps"]!.AsArray().Select(n => (long)n!).ToArray());
                Assert.Equal(new long[] { 2, 3, 32, 32 }, inBrowser["imageShape"]!.AsArray().Select(n => (long)n!).ToArray());
                float[] latents = Doubles(inBrowser["latents"]).Select(v => (float)v).ToArray(), image = Doubles(inBrowser["image"]).Select(v => (float)v).ToArray();
                float[] expectedLatents = expected.Latents.data<float>().ToArray(), expectedImage01 = expected.Image01.data<float>().ToArray();
                Assert.True(latents.All(float.IsFinite) && image.All(float.IsFinite), "the browser's latents or image hold a NaN or infinity");
                Assert.True(expected.Image01.std().item<float>() > 0.01, "the reference image is flat"); // a real picture, not one any two runners agree on
                double latentError = latents.Zip(expectedLatents, (a, b) => Math.Abs(a - b)).Max();
                double latentScale = expectedLatents.Max(Math.Abs);
                double imageError = image.Select(v => Math.Clamp(v / 2f + 0.5f, 0f, 1f)).Zip(expectedImage01, (a, b) => Math.Abs(a - b)).Max();
                report.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"guidance {guidance}, negative \"{negative}\", 2 x 4 x 16 x 16 from the same noise, {Steps} DDIM steps: max |browser - core| = {latentError:E2} on the latents " +
                    $"(max |latent| {latentScale:F2}), {imageError:E2} on the [0, 1] image"));
                Assert.True(latentError <= Tolerance * latentScale, $"guidance {guidance}: the latents differ by {latentError:E3}");
                Assert.True(imageError <= Tolerance, $"guidance {guidance}: the image differs by {imageError:E3}");
            }
            File.WriteAllText(Path.Combine(_shots, "6-on-device-pipeline-parity.txt"), report.ToString());

            // 4. the seeded noise: the same for a seed, standard normal
            var noiseStats = JsonNode.Parse(await page.EvaluateAsync<string>(
                "() => { const a = window.dprune.gaussianNoise(100000, 5), b = window.dprune.gaussianNoise(100000, 5), c = window.dprune.gaussianNoise(100000, 6); " +
                "const mean = a.reduce((s, v) => s + v, 0) / a.length; const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length; " +
                "return JSON.stringify({ same: a.every((v, i) => v === b[i]), differs: a.some((v, i) => v !== c[i]), mean, variance }); }"))!;
            Assert.True((bool)noiseStats["same"]!);
            Assert.True((bool)noiseStats["differs"]!);
            Assert.InRange((double)noiseStats["mean"]!, -0.02, 0.02);
            Assert.InRange((double)noiseStats["variance"]!, 0.98, 1.02);

            // 5. a user writes a prompt and generates an image with the page's controls, watching the progress
            await page.FillAsync(".ondevice-prompt", "a red apple on a wooden table");
            await page.FillAsync(".ondevice-negative", "blurry, low quality");
            await page.FillAsync(".ondevice-steps", "10");
            await page.FillAsync(".ondevice-seed", "3");
            await page.ClickAsync(".ondevice-run");
            var seen = new HashSet<string>();
            while (await page.QuerySelectorAsync(".ondevice[data-sampled='true']") is null)
            {
                string status = await page.InnerTextAsync(".ondevice-status");
                Assert.DoesNotContain("failed", status);
                seen.Add(status);
                await page.WaitForTimeoutAsync(20);
            }
            Assert.Contains(seen, s => System.Text.RegularExpressions.Regex.IsMatch(s, @"^Step \d+/10: \d+\.\d ms$"));
            Assert.Matches(@"^1 image in 10 steps on WebAssembly in this browser: \d+\.\d ms per step \(median\), \d+\.\d\d s in all\.$", await page.InnerTextAsync(".ondevice-status"));
            Assert.Equal(10, await page.EvalOnSelectorAsync<int>(".ondevice-progress", "p => p.value"));
            var canvas = JsonNode.Parse(await page.EvalOnSelectorAsync<string>(".ondevice-canvas",
                "c => { const d = c.getContext('2d').getImageData(2, 2, c.width - 4, c.height - 4).data; const v = []; for (let i = 0; i < d.length; i += 4) v.push(d[i], d[i + 1], d[i + 2]); " +
                "const mean = v.reduce((s, x) => s + x, 0) / v.length; return JSON.stringify({ width: c.width, height: c.height, std: Math.sqrt(v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length) }); }"))!;
            Assert.Equal(32 * 8 + 4, (int)canvas["width"]!); // one 32 x 32 image scaled 8 times, 2-pixel frame
            Assert.True((double)canvas["std"]! > 2, $"the drawn image is flat (std {canvas["std"]})");
            await page.ScreenshotAsync(new() { Path = Path.Combine(_shots, "6-on-device-pipeline.png"), FullPage = true });

            // 6. a pipeline that names another scheduler runs DDIM on that scheduler's noise schedule, and says so; one the page cannot run says why
            CopyBundle("sd-onnx-pndm", json => json["_class_name"] = "PNDMScheduler", index => index["scheduler"] = new JsonArray("diffusers", "PNDMScheduler"));
            await page.GotoAsync(_url + "ondevice?bundle=sd-onnx-pndm");
            await page.WaitForSelectorAsync(".ondevice[data-ready='true'], .ondevice[data-failed='true']", new() { Timeout = 180_000 });
            Assert.StartsWith("Ready: OnnxStableDiffusionPipeline, latents 4 x 16 x 16, DDIM on its PNDMScheduler's noise schedule, on WebAssembly.", await page.InnerTextAsync(".ondevice-status"));
            CopyBundle("sd-onnx-thresholding", json => json["thresholding"] = true, _ => { });
            await page.GotoAsync(_url + "ondevice?bundle=sd-onnx-thresholding");
            await page.WaitForSelectorAsync(".ondevice[data-ready='true'], .ondevice[data-failed='true']", new() { Timeout = 180_000 });
            Assert.Equal("The pipeline could not be loaded: scheduler_config.json: thresholding is not supported. Set \"thresholding\": false.",
                await page.InnerTextAsync(".ondevice-status"));
            Assert.True(await page.IsDisabledAsync(".ondevice-run"));
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            await page.ScreenshotAsync(new() { Path = Path.Combine(_shots, "6-on-device-pipeline-failure.png"), FullPage = true });
            throw new InvalidOperationException($"{e.Message}\nStudio log:\n{Log()}", e);
        }
    }
}
