using System.Globalization;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Batch;
using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Studio.Batch;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Jobs;

namespace DiffusionPrune.Studio.Tests;

/// <summary>Fake batches for the page and folder tests: models the core's plan checks accept, and item files as the runner writes them.</summary>
internal static class BatchFixtures
{
    /// <summary>models/<paramref name="name"/>: a tiny U-Net config, dummy weights and a scheduler config (nothing here loads the weights).</summary>
    public static string AddModel(TempSamplesFolder samples, string name)
    {
        string folder = samples.AddModel(name, TestModels.TinyUNetConfig(), 16);
        File.WriteAllText(Path.Combine(folder, ModelFolder.SchedulerConfig), ModelFolder.DefaultSchedulerJson(classConditional: false));
        return folder;
    }

    /// <summary>
    /// A batch of <paramref name="model"/> x magnitude, random x 20% in <c>batchesRoot/name</c>: the original and magnitude
    /// finished (made-up figures, latency at batch 1 and 4), random failed, summary.md and a one-pixel pareto.png.
    /// </summary>
    public static string WriteBatch(string batchesRoot, string name, string model)
    {
        string folder = Path.Combine(batchesRoot, name);
        Directory.CreateDirectory(folder);
        var settings = new BatchSettings { LatencyBatches = [1, 4] };
        string planPath = Path.Combine(folder, BatchJob.PlanFileName);
        File.WriteAllText(planPath, settings.ToPlan([("alpha", model)], "test").ToJsonString());
        var plan = BatchPlan.Load(planPath);
        var items = plan.Items();
        Item(plan, items[0], achieved: 0, parameters: 100_000, macs: 5_000_000, fid: 120.5, ssim: null, ortMs: [2.0, 6.0]);
        Item(plan, items[1], achieved: 0.215, parameters: 78_500, macs: 4_000_000, fid: 131.25, ssim: 0.8123, ortMs: [1.5, 4.0]);
        File.WriteAllText(Path.Combine(folder, BatchSummary.MarkdownName), "# Batch summary\n");
        File.WriteAllText(Path.Combine(folder, BatchSummary.CsvName), "model,method\n");
        File.WriteAllBytes(Path.Combine(folder, BatchSummary.ParetoName), PixelGrid.EncodePng([128], 1, 1, 1));
        File.WriteAllText(Path.Combine(folder, BatchJob.RunFileName), """{"ran": 2, "skipped": 0, "failed": [{"item": "alpha random 20%", "error": "out of memory"}]}""");
        return folder;
    }

    private static void Item(BatchPlan plan, BatchItem item, double achieved, long parameters, long macs, double fid, double? ssim, double[] ortMs)
    {
        string folder = plan.FolderOf(item);
        Directory.CreateDirectory(folder);
        var latency = plan.Latency!.Batches.Select((b, i) => (JsonNode)new LatencyResult(LatencyResult.OnnxRuntimeCpu, b, 2, 10, ortMs[i], ortMs[i] * 0.9, ortMs[i] * 1.1).ToJson()).ToArray();
        var record = new JsonObject
        {
            ["format"] = BatchRunner.ItemFormat,
            ["model"] = item.Model.Name,
            ["method"] = item.Method ?? BatchItem.OriginalName,
            ["target_removed_params"] = item.Target,
            ["achieved_removed_params"] = achieved,
            ["parameters"] = parameters,
            ["macs"] = macs,
            ["settings"] = plan.SettingsOf(item),
            ["eval"] = new JsonObject
            {
                ["fid_proxy"] = new JsonObject { ["value"] = fid, ["lower"] = fid - 10, ["upper"] = fid + 10 },
                ["kid"] = new JsonObject { ["mean"] = 0.01234 },
                ["ssim_to_reference"] = ssim,
            },
            ["latency"] = new JsonObject { [LatencyResult.OnnxRuntimeCpu] = new JsonArray(latency) },
        };
        File.WriteAllText(Path.Combine(folder, BatchRunner.ItemFileName), record.ToJsonString());
    }
}

/// <summary>The batch folders: only plain names of finished batches, only plain summary files directly in one.</summary>
public sealed class BatchFoldersTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public void Lists_finished_batches_and_serves_only_their_own_plain_files()
    {
        string model = BatchFixtures.AddModel(_samples, "alpha");
        var folders = new BatchFolders(Path.Combine(_samples.Root, "batches"));
        Assert.Empty(folders.List()); // no folder yet
        string folder = BatchFixtures.WriteBatch(folders.Root, "b1", model);
        Directory.CreateDirectory(Path.Combine(folders.Root, "running")); // no summary.md: not listed
        File.WriteAllText(Path.Combine(_samples.Root, "secret.md"), "secret");

        var entry = Assert.Single(folders.List());
        Assert.Equal("b1", entry.Name);
        Assert.Equal(2, entry.Rows.Count);
        Assert.Equal("alpha random 20%", Assert.Single(entry.Unfinished).ToString());
        Assert.Equal(new BatchFailure("alpha random 20%", "out of memory"), Assert.Single(entry.Failed));
        Assert.Null(entry.Problem);

        foreach (var file in new[] { "summary.md", "summary.csv", "pareto.png", "plan.json", "batch-run.json" })
            Assert.Equal(Path.Combine(folder, file), folders.FileOf("b1", file));
        foreach (var (name, file) in new (string?, string?)[]
        {
            ("b1", "../secret.md"), ("b1", "..%2Fsecret.md"), ("..", "secret.md"), ("b1/..", "secret.md"), ("b1", "alpha/original/item.json"),
            ("b1", "alpha"), ("b1", "nothing.png"), ("b1", ".hidden.md"), ("running", "summary.md"), ("nothing", "summary.md"), (null, "summary.md"), ("b1", null),
            ("b1", "plan.json.partial"), (folder, "summary.md"), ("b1", Path.Combine(folder, "summary.md")),
        })
            Assert.Null(folders.FileOf(name, file));
        File.WriteAllText(Path.Combine(folder, "notes.txt"), "x");
        Assert.Null(folders.FileOf("b1", "notes.txt")); // not a summary file type
        foreach (var name in new[] { "..", ".", "b1/", "/b1", "../b1", "b1\\x", "" })
            Assert.Null(folders.Find(name));

        // nothing that links out: a linked file in a batch, or a linked batch folder
        File.CreateSymbolicLink(Path.Combine(folder, "leak.md"), Path.Combine(_samples.Root, "secret.md"));
        Assert.Null(folders.FileOf("b1", "leak.md"));
        string outside = BatchFixtures.WriteBatch(Path.Combine(_samples.Root, "elsewhere"), "b2", model);
        Directory.CreateSymbolicLink(Path.Combine(folders.Root, "b2"), outside);
        Assert.Null(folders.Find("b2"));
        Assert.Null(folders.FileOf("b2", "summary.md"));
        Assert.Equal(["b1"], folders.List().Select(e => e.Name));
    }

    [Fact]
    public void A_batch_whose_model_is_gone_is_still_listed_with_the_problem()
    {
        string model = BatchFixtures.AddModel(_samples, "alpha");
        var folders = new BatchFolders(Path.Combine(_samples.Root, "batches"));
        BatchFixtures.WriteBatch(folders.Root, "b1", model);
        Directory.Delete(model, recursive: true);
        var entry = Assert.Single(folders.List());
        Assert.Null(entry.Plan);
        Assert.Empty(entry.Rows);
        Assert.Contains("The plan cannot be read now", entry.Problem);
        Assert.NotNull(folders.FileOf("b1", "summary.md"));
    }
}

/// <summary>A batch job made from catalog models and settings: its plan, its refusals, its name and its resumption.</summary>
public sealed class BatchJobTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    private ModelSummary Model(string listed, string folderName)
    {
        string folder = BatchFixtures.AddModel(_samples, folderName);
        return new ModelSummary(listed, folder, "UNet2DModel", 16, null);
    }

    [Fact]
    public void Create_writes_a_plan_the_core_loads_and_the_job_resumes_from_it()
    {
        var models = new[] { Model("pruned/alpha-magnitude-20-20261203-120000-000", "a1"), Model("uploaded/alpha-magnitude-20", "a2") };
        string root = Path.Combine(_samples.Root, "out", "batches");
        var job = BatchJob.Create(models, new BatchSettings { Methods = ["random"], Targets = [0.25] }, root);

        var plan = BatchPlan.Load(job.PlanPath);
        Assert.Equal(["alpha-magnitude-20", "alpha-magnitude-20-2"], plan.Models.Select(m => m.Name)); // the shown names, once each
        Assert.Equal(models.Select(m => m.FolderPath), plan.Models.Select(m => m.Path));
        Assert.Equal(Path.GetDirectoryName(job.PlanPath), plan.Output);
        Assert.Equal((100, 10), (plan.Eval.Samples, plan.Eval.Steps)); // quick.json's evaluation by default
        Assert.Equal([1, 16], plan.Latency!.Batches);
        Assert.Equal("Batch alpha-magnitude-20, alpha-magnitude-20-2 × random × 25%", job.Name);

        var resumed = Assert.IsType<BatchJob>(StudioJobs.Resume("batch", job.RequestJson!, job.Id));
        Assert.Equal((job.Id, job.PlanPath, job.Name, job.OutputPath), (resumed.Id, resumed.PlanPath, resumed.Name, resumed.OutputPath));
    }

    [Fact]
    public async Task A_failed_item_is_reported_with_its_reason_and_the_others_still_finish()
    {
        // a real run of the tiny model: its original is evaluated, and random-layer cannot remove 90% (too few removable layers)
        TorchSharp.torch.manual_seed(4);
        string folder = Path.Combine(_samples.ModelsRoot, "tiny");
        TestModels.SaveTinyUNet(folder);
        var model = new ModelSummary("tiny", folder, "UNet2DModel", 0, null);
        var settings = new BatchSettings
        {
            Methods = ["random-layer"], Targets = [0.9], PruneSteps = 1, Calibration = 2, EvalSamples = 4, EvalSteps = 1,
            Formats = [DiffusionPrune.Export.ExportFormat.Safetensors], Latency = false,
        };
        var job = BatchJob.Create([model], settings, Path.Combine(_samples.Root, "out", "batches"));
        var reports = new List<JobProgress>();
        await job.RunAsync(new DiffusionPrune.Pipeline.SynchronousProgress<JobProgress>(reports.Add), CancellationToken.None);

        Assert.Contains("1 item(s) run, 0 skipped as finished earlier, 1 failed; 1 of 2 items finished", job.Result);
        Assert.Contains("Failed: tiny random-layer 90%: ", job.Result);
        Assert.Contains(reports, r => !r.Note && r.Fraction == 0.5 && r.Message.StartsWith("[2/2] tiny random-layer 90%", StringComparison.Ordinal)); // the second item's half of the bar
        Assert.Contains(reports, r => r.Message.Contains("FAILED", StringComparison.Ordinal));

        var entry = new BatchFolders(Path.Combine(_samples.Root, "out", "batches")).Find(job.BatchName)!;
        Assert.Equal("original", Assert.Single(entry.Rows).Row.Method);
        Assert.Equal("tiny random-layer 90%", Assert.Single(entry.Unfinished).ToString());
        Assert.Equal("tiny random-layer 90%", Assert.Single(entry.Failed).Item);
        Assert.True(File.Exists(Path.Combine(job.OutputPath!, BatchSummary.ParetoName)));
    }

    [Fact]
    public void A_plan_the_core_refuses_writes_nothing_and_names_the_setting()
    {
        var model = Model("alpha", "alpha");
        string root = Path.Combine(_samples.Root, "out", "batches");
        foreach (var (settings, expected) in new (BatchSettings, string)[]
        {
            (new BatchSettings { Methods = ["nope"] }, "\"methods\" has 'nope'"),
            (new BatchSettings { Targets = [1.5] }, "\"targets\" has 1.5"),
            (new BatchSettings { Targets = [0.2, 0.2] }, "lists 0.2 twice"),
            (new BatchSettings { Formats = [DiffusionPrune.Export.ExportFormat.Safetensors] }, "must include \"onnx\""),
            (new BatchSettings { EvalSamples = 1 }, "\"eval\".\"samples\""),
        })
        {
            var e = Assert.Throws<BatchPlanException>(() => BatchJob.Create([model], settings, root));
            Assert.Contains(expected, e.Message);
            Assert.DoesNotContain("plan.json:", e.Message);
        }
        Assert.Throws<BatchPlanException>(() => BatchJob.Create([], new BatchSettings(), root));
        Assert.False(Directory.Exists(root));
    }

    [Fact]
    public void Targets_and_batch_sizes_are_read_from_text_in_the_invariant_culture()
    {
        var culture = CultureInfo.CurrentCulture;
        try
        {
            CultureInfo.CurrentCulture = CultureInfo.GetCultureInfo("de-DE");
            Assert.Equal([0.1, 0.25], BatchSettings.ParseTargets("0.1, 0.25", out var error));
            Assert.Null(error);
            Assert.Equal("0.1, 0.25", BatchSettings.Join(new[] { 0.1, 0.25 }));
        }
        finally
        {
            CultureInfo.CurrentCulture = culture;
        }
        foreach (var text in new[] { "", "0", "1", "0,5x", "-0.1", "0.2 0.2", "NaN" })
        {
            Assert.Empty(BatchSettings.ParseTargets(text, out var error));
            Assert.NotNull(error);
        }
        Assert.Equal([1, 16], BatchSettings.ParseBatches("1; 16 16", out var none));
        Assert.Null(none);
        foreach (var text in new[] { "", "0", "1.5", "2000", "-1" })
        {
            Assert.Empty(BatchSettings.ParseBatches(text, out var error));
            Assert.NotNull(error);
        }
    }
}
