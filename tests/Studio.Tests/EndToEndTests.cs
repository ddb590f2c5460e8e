using System.Diagnostics;
using System.IO.Compression;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Studio.Hosting;
using Microsoft.Playwright;

namespace DiffusionPrune.Studio.Tests;

[CollectionDefinition(nameof(EndToEndCollection), DisableParallelization = true)]
public sealed class EndToEndCollection;

/// <summary>
/// The Studio as a user meets it: the real server (its own process, on a free loopback port, over a copy of the
/// embedded default U-Net) driven by Playwright in Debian's chromium (<c>/usr/bin/chromium</c>, or
/// <c>DPRUNE_CHROMIUM</c>; <c>.ci/run</c> installs it). It prunes mnist-unet with magnitude at 20% and watches the
/// progress, compares the result with the original (both grids and the figures), exports the bundle and downloads its
/// zip, runs the bundle in the browser with ONNX Runtime Web (its DDIM loop held to ours from the same noise), and checks
/// that the API refuses bad input. Screenshots of every page go to <c>out/e2e/</c>.
/// </summary>
[Collection(nameof(EndToEndCollection))]
public sealed class EndToEndTests : IAsyncLifetime
{
    private readonly TempSamplesFolder _samples = new();
    private readonly StringBuilder _serverLog = new();
    private Process? _server;
    private string _url = "";
    private readonly string _shots = Path.Combine(RepositoryLayout.FindRoot()!, "out", "e2e");

    public async Task InitializeAsync()
    {
        string root = RepositoryLayout.FindRoot() ?? throw new InvalidOperationException("The repository root (Diffusion.sln) was not found.");
        CopyFolder(Path.Combine(root, "samples", "models", "mnist-unet"), Path.Combine(_samples.ModelsRoot, "mnist-unet"));
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }
        _url = $"http://127.0.0.1:{port}/";
        var start = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[]
        {
            Path.Combine(AppContext.BaseDirectory, "Studio.dll"), "--urls", _url.TrimEnd('/'),
            $"--Studio:SamplesRoot={_samples.Root}", $"--Studio:OutputRoot={Path.Combine(_samples.Root, "out")}",
            $"--Studio:DataFolder={Path.Combine(_samples.Root, "data")}",
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
                if ((await http.GetAsync(_url + "api/models")).IsSuccessStatusCode) break;
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
        _samples.Dispose();
        return Task.CompletedTask;
    }

    private string Log()
    {
        lock (_serverLog) return _serverLog.ToString();
    }

    private static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
    }

    private Task Shot(IPage page, string name) => page.ScreenshotAsync(new() { Path = Path.Combine(_shots, name + ".png"), FullPage = true });

    /// <summary>
    /// The browser's DDIM loop (wwwroot/js/ondevice.mjs) against ours: the same timesteps for every spacing, and from the
    /// same noise the same images within float error (ONNX Runtime Web against ONNX Runtime, float32 scalars both sides).
    /// </summary>
    private static async Task AssertBrowserSamplerMatchesOurs(IPage page, string bundleFolder)
    {
        var all = await page.EvaluateAsync<long[][][]>(
            "async () => { const m = await import('./js/ondevice.mjs'); return ['leading', 'trailing', 'linspace'].map(spacing => " +
            "Array.from({ length: 1000 }, (_, i) => m.timesteps({ num_train_timesteps: 1000, timestep_spacing: spacing, steps_offset: spacing === 'leading' ? 1 : 0 }, i + 1))); }");
        string[] spacings = ["leading", "trailing", "linspace"];
        for (int s = 0; s < spacings.Length; s++)
            for (int steps = 1; steps <= 1000; steps++) // every step count, every spacing
            {
                var config = new Schedulers.SchedulerConfig { TimestepSpacing = spacings[s], StepsOffset = spacings[s] == "leading" ? 1 : 0 };
                Assert.True(Schedulers.NoiseSchedule.SpacedTimesteps(config, steps).SequenceEqual(all[s][steps - 1]), $"{spacings[s]}, {steps} steps");
            }

        var random = new Random(7);
        var noise = new float[4 * 32 * 32];
        for (int i = 0; i < noise.Length; i++) // Box-Muller, any fixed noise will do
            noise[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        var browser = (await page.EvaluateAsync<double[]>( // doubles both ways: plain JSON numbers
            "async ([noise, steps]) => Array.from((await window.dprune.sampleFromNoise(noise, { steps })).sample)",
            new object[] { noise.Select(v => (double)v).ToArray(), 8 })).Select(v => (float)v).ToArray();
        using var model = Inference.InferenceModel.Load(bundleFolder, "onnx", TorchSharp.torch.CPU);
        using var scheduler = Schedulers.Scheduler.FromFile(Path.Combine(bundleFolder, Formats.ModelFolder.SchedulerConfig), "ddim");
        using var start = TorchSharp.torch.tensor(noise, [4, 1, 32, 32]);
        var ours = model.Sample(scheduler, start, null, new Inference.SampleOptions(8, 1.0));
        var expected = ours.Final.data<float>().ToArray();
        ours.Final.Dispose();
        Assert.Equal(expected.Length, browser.Length);
        Assert.True(expected.All(float.IsFinite) && browser.All(float.IsFinite),
            $"not finite: ours {expected.Count(v => !float.IsFinite(v))} (first {string.Join(", ", expected.Take(3))}), the browser's {browser.Count(v => !float.IsFinite(v))} (first {string.Join(", ", browser.Take(3))})");
        double worst = expected.Zip(browser, (a, b) => Math.Abs(a - b)).Max();
        File.WriteAllText(Path.Combine(Path.GetDirectoryName(bundleFolder)!, "..", "..", "on-device-parity.txt"), string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"4 x 1 x 32 x 32 from the same noise, 8 DDIM steps: max |browser - ours| = {worst:E2} (images in [-1, 1])\n"));
        Assert.True(worst < 1e-3, $"the browser's samples differ from ours by up to {worst}");
    }

    [Fact]
    public async Task A_user_prunes_compares_exports_runs_the_bundle_in_the_browser_and_the_api_refuses_bad_input()
    {
        string chromium = Environment.GetEnvironmentVariable("DPRUNE_CHROMIUM") ?? "/usr/bin/chromium";
        Assert.True(File.Exists(chromium), $"Chromium is not at {chromium}: apt-get install -y chromium (.ci/run does), or set DPRUNE_CHROMIUM.");
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new()
        {
            ExecutablePath = chromium, Headless = true,
            Args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
        });
        var context = await browser.NewContextAsync(new() { ViewportSize = new() { Width = 1400, Height = 1000 }, AcceptDownloads = true });
        var page = await context.NewPageAsync();
        page.SetDefaultTimeout(60_000);
        try
        {
            // 1. the studio opens and lists the model
            await page.GotoAsync(_url);
            await Shot(page, "1-home");
            await page.GotoAsync(_url + "models");
            await page.WaitForSelectorAsync("a.model-link:text-is('mnist-unet')");
            await Shot(page, "1-models");

            // 2. prune mnist-unet with magnitude at 20% (with its quick look), watching the progress
            await page.GotoAsync(_url + "prune?model=mnist-unet");
            await page.WaitForSelectorAsync("button.start-prune:not([disabled])");
            await page.WaitForTimeoutAsync(500); // the circuit is interactive
            await Shot(page, "2-prune-form");
            await page.ClickAsync("button.start-prune");
            await page.WaitForURLAsync("**/jobs/*");
            var seen = new HashSet<string>();
            var until = DateTime.UtcNow.AddMinutes(5);
            while (!(await page.InnerTextAsync(".job-status")).Contains("Succeeded", StringComparison.Ordinal) && DateTime.UtcNow < until)
            {
                seen.Add(await page.InnerTextAsync(".job-percent"));
                Assert.Empty(await page.QuerySelectorAllAsync(".job-error"));
                await page.WaitForTimeoutAsync(100);
            }
            seen.Add(await page.InnerTextAsync(".job-percent"));
            Assert.Contains("100 %", seen);
            Assert.Contains("removed", await page.InnerTextAsync(".job-result"));
            Assert.Contains("Quick look", await page.InnerTextAsync(".job-result"));
            await Shot(page, "2-prune-job");
            string pruneJob = page.Url[(page.Url.LastIndexOf('/') + 1)..];

            // 3. compare with the original: both grids and the figures
            await page.ClickAsync(".compare-with-original");
            await page.WaitForSelectorAsync("button.start-compare:not([disabled])");
            await page.WaitForTimeoutAsync(500);
            await page.FillAsync(".samples-field input", "8");
            await page.PressAsync(".samples-field input", "Tab");
            await Shot(page, "3-compare-form");
            await page.ClickAsync("button.start-compare");
            await page.WaitForURLAsync("**/jobs/*");
            await page.ClickAsync(".open-comparison", new() { Timeout = 300_000 });
            await page.WaitForSelectorAsync(".quality-table");
            var grids = await page.QuerySelectorAllAsync(".compared-grid img");
            Assert.Equal(2, grids.Count);
            await page.WaitForFunctionAsync("() => [...document.querySelectorAll('.compared-grid img')].every(i => i.complete && i.naturalWidth > 0)");
            var rows = await page.QuerySelectorAllAsync(".quality-table tbody tr");
            Assert.Equal(2, rows.Count);
            Assert.Matches(@"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", await rows[1].InnerTextAsync()); // FID-proxy with its interval
            foreach (var row in await page.QuerySelectorAllAsync(".cost-table tbody tr")) // latency in TorchSharp and ONNX Runtime, with their spread
                Assert.Equal(2, System.Text.RegularExpressions.Regex.Matches(await row.InnerTextAsync(), @"\d+\.\d \[\d+\.\d, \d+\.\d\]").Count);
            await Shot(page, "3-compare");
            await page.ClickAsync(".difference-switch input");
            await page.WaitForFunctionAsync("() => document.querySelectorAll('.compared-grid img').length === 1");
            await Shot(page, "3-compare-differences");

            // 4. export the pruned model and download its bundle
            using var http = new HttpClient { BaseAddress = new Uri(_url) };
            var pruned = JsonNode.Parse(await http.GetStringAsync($"api/jobs/{pruneJob}"))!;
            string prunedName = (string)pruned["result"]!["output_model"]!;
            await page.GotoAsync(_url + $"export?model={Uri.EscapeDataString(prunedName)}");
            await page.WaitForSelectorAsync("button.start-export:not([disabled])");
            await page.WaitForTimeoutAsync(500);
            await page.ClickAsync("button.start-export");
            await page.WaitForSelectorAsync("a.download-bundle", new() { Timeout = 180_000 });
            string exportJob = page.Url[(page.Url.LastIndexOf('/') + 1)..];
            await Shot(page, "4-export-job");
            var download = await page.RunAndWaitForDownloadAsync(() => page.ClickAsync("a.download-bundle"));
            string zipPath = Path.Combine(_samples.Root, "bundle.zip");
            await download.SaveAsAsync(zipPath);
            using (var zip = ZipFile.OpenRead(zipPath))
            {
                var entries = zip.Entries.Select(e => e.Name).ToHashSet();
                Assert.Contains("model.onnx", entries);
                Assert.Contains("diffusion_pytorch_model.safetensors", entries);
                Assert.Contains("onnx_model.json", entries);
            }
            await page.GotoAsync(_url + "export");
            await page.WaitForSelectorAsync(".bundles-table");
            await Shot(page, "4-export");

            // 5. the bundle runs in this browser (ONNX Runtime Web), and the same noise gives our sampler's image
            string bundleName = (string)JsonNode.Parse(await http.GetStringAsync($"api/jobs/{exportJob}"))!["result"]!["bundle"]!;
            string bundleFolder = Path.Combine(_samples.Root, "out", StudioOptions.ExportsFolder, bundleName);
            await page.GotoAsync(_url + $"ondevice?bundle={Uri.EscapeDataString(bundleName)}");
            await page.WaitForSelectorAsync(".ondevice[data-ready='true'], .ondevice[data-failed='true']", new() { Timeout = 180_000 });
            Assert.StartsWith("Ready", await page.InnerTextAsync(".ondevice-status"));
            await AssertBrowserSamplerMatchesOurs(page, bundleFolder);
            await page.FillAsync(".ondevice-steps", "10");
            await page.ClickAsync(".ondevice-run");
            await page.WaitForSelectorAsync(".ondevice[data-sampled='true']", new() { Timeout = 300_000 });
            Assert.Matches(@"16 images in 10 steps on (WebAssembly|WebGPU) in this browser: \d+\.\d ms per step", await page.InnerTextAsync(".ondevice-status"));
            await Shot(page, "5-on-device");
            File.Copy(Path.Combine(_samples.Root, "on-device-parity.txt"), Path.Combine(_shots, "5-on-device-parity.txt"), overwrite: true);

            // 6. the API refuses bad input with problem details, and knows no unknown job
            var bad = await http.PostAsync("api/jobs", new StringContent("""{"kind": "prune", "model": "../models/mnist-unet", "method": "magnitude", "target_params": 0.2}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
            Assert.Equal("application/problem+json", bad.Content.Headers.ContentType?.MediaType);
            Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync($"api/jobs/{Guid.NewGuid()}")).StatusCode);
            Assert.Equal(HttpStatusCode.BadRequest, (await http.PostAsync("api/jobs", new StringContent("""{"kind": "prune", "model": "mnist-unet", "method": "magnitude", "target_params": 1.5}""", Encoding.UTF8, "application/json"))).StatusCode);
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            await Shot(page, "failure");
            throw new InvalidOperationException($"{e.Message}\nStudio log:\n{Log()}", e);
        }
    }
}
