using DiffusionPrune.Batch;
using DiffusionPrune.Studio.Batch;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Jobs;
using Microsoft.AspNetCore.Components;
using Microsoft.Extensions.DependencyInjection;
using BatchPage = DiffusionPrune.Studio.Components.Pages.Batch.Batch;
using BatchResultPage = DiffusionPrune.Studio.Components.Pages.Batch.BatchResult;

namespace DiffusionPrune.Studio.Tests;

/// <summary>The Batch page: a plan built from a form (catalog models, known methods, targets, settings), never from a path.</summary>
public sealed class BatchPageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly JobStateService _state = new();

    public BatchPageTests()
    {
        BatchFixtures.AddModel(_samples, "alpha");
        BatchFixtures.AddModel(_samples, "beta");
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
        Context.Services.AddSingleton(_state);
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton(new BatchFolders(BatchesRoot));
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions
        {
            SamplesRoot = _samples.Root,
            OutputRoot = Path.Combine(_samples.Root, "out"),
        }));
    }

    private string BatchesRoot => Path.Combine(_samples.Root, "out", "batches");

    public void Dispose() => _samples.Dispose();

    private JobsPageTests.RecordingJobQueue Queue => (JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>();

    [Fact]
    public void A_sample_plan_fills_the_form_and_Start_writes_its_plan_and_queues_a_batch_job()
    {
        // a preset as samples/plans holds them: relative to its root, with an output the Studio ignores
        Directory.CreateDirectory(Path.Combine(_samples.Root, "plans"));
        File.WriteAllText(Path.Combine(_samples.Root, "plans", "quick.json"), """
            { "description": "Quick: two cheap methods.", "root": "..", "output": "/tmp/elsewhere",
              "models": ["models/beta", "models/missing"], "methods": ["random", "taylor"], "targets": [0.3, 0.1],
              "prune": { "steps": 3, "calibration": 4, "seed": 7 }, "eval": { "samples": 12, "steps": 5, "seed": 2 },
              "export": { "formats": ["onnx"] }, "latency": { "batches": [1, 2], "warmup": 1, "runs": 3 } }
            """);
        var page = Context.Render<BatchPage>();
        page.WaitForAssertion(() => Assert.False(page.Find("button.start-batch").HasAttribute("disabled")), WaitTimeout);
        Assert.Contains("None yet", page.Find(".no-batches").TextContent);
        Assert.Contains("5 items", page.Find(".item-count").TextContent); // beta's original, then 2 methods x 2 targets
        Assert.Contains("1 of its models are not in the Studio's list", page.Markup); // models/missing
        Assert.Equal("0.3, 0.1", page.Find(".targets-field input").GetAttribute("value"));

        page.Find("button.start-batch").Click();
        page.WaitForAssertion(() => Assert.Single(Queue.Enqueued), WaitTimeout);
        var job = Assert.IsType<BatchJob>(Queue.Enqueued[0]);
        Assert.Equal("batch", job.Kind);
        Assert.StartsWith(Path.Combine(BatchesRoot, "batch-"), job.OutputPath);
        Assert.Equal(Path.Combine(job.OutputPath!, "plan.json"), job.PlanPath);
        Assert.Equal("Batch beta × random, taylor × 10%, 30%", job.Name);

        // the plan the job runs: the catalog's folder, the form's settings, the job's own folder as output
        var plan = BatchPlan.Load(job.PlanPath);
        Assert.Equal(job.OutputPath, plan.Output);
        var model = Assert.Single(plan.Models);
        Assert.Equal(("beta", Path.Combine(_samples.ModelsRoot, "beta")), (model.Name, model.Path));
        Assert.Equal(["random", "taylor"], plan.Methods);
        Assert.Equal([0.3, 0.1], plan.Targets);
        Assert.Equal((3, 4, 7L), (plan.Prune.Steps, plan.Prune.Calibration, plan.Prune.Seed));
        Assert.Equal((12, 5, 2L), (plan.Eval.Samples, plan.Eval.Steps, plan.Eval.Seed));
        Assert.Equal([DiffusionPrune.Export.ExportFormat.Onnx], plan.ExportFormats);
        Assert.Equal([1, 2], plan.Latency!.Batches);
        Assert.Equal((1, 3), (plan.Latency.Warmup, plan.Latency.Runs));

        // progress in place, with the job's page a click away
        page.WaitForAssertion(() => Assert.Equal($"jobs/{job.Id}", page.Find(".batch-progress a.open-job").GetAttribute("href")), WaitTimeout);
        _state.MarkRunning(job.Id);
        _state.ReportProgress(job.Id, new JobProgress(0.5, "[2/5] beta random 10%: pruning"));
        page.WaitForAssertion(() => Assert.Contains("[2/5] beta random 10%: pruning", page.Find(".batch-message").TextContent), WaitTimeout);
        Assert.Empty(page.FindAll(".open-summary"));
        _state.MarkSucceeded(job.Id);
        page.WaitForAssertion(() => Assert.Equal($"batch/{job.BatchName}", page.Find("a.open-summary").GetAttribute("href")), WaitTimeout);
    }

    [Fact]
    public void Bad_targets_keep_Start_disabled_and_the_cores_refusal_shows_in_place()
    {
        var page = Context.Render<BatchPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".batch-form")), WaitTimeout);
        // no preset here: quick.json's defaults, and no model chosen yet
        Assert.Equal("0.2", page.Find(".targets-field input").GetAttribute("value"));
        Assert.True(page.Find("button.start-batch").HasAttribute("disabled"));
        Assert.Contains("Choose models, methods and targets.", page.Find(".item-count").TextContent);

        Context.Services.GetRequiredService<NavigationManager>().NavigateTo("batch?models=alpha&models=nope");
        page = Context.Render<BatchPage>();
        page.WaitForAssertion(() => Assert.False(page.Find("button.start-batch").HasAttribute("disabled")), WaitTimeout);
        Assert.Contains("3 items", page.Find(".item-count").TextContent);

        page.Find(".targets-field input").Input("0.2, 1.5");
        page.WaitForAssertion(() => Assert.True(page.Find("button.start-batch").HasAttribute("disabled")), WaitTimeout);
        Assert.Contains("'1.5' is not a fraction strictly between 0 and 1", page.Markup);
        page.Find(".targets-field input").Input("0.2");
        page.WaitForAssertion(() => Assert.False(page.Find("button.start-batch").HasAttribute("disabled")), WaitTimeout);

        // latency times model.onnx: without ONNX the core refuses the plan, and says so here
        page.Find(".format-onnx input").Change(false);
        page.WaitForAssertion(() => Assert.False(page.Find("button.start-batch").HasAttribute("disabled")), WaitTimeout);
        page.Find("button.start-batch").Click();
        page.WaitForAssertion(() => Assert.Contains("must include \"onnx\"", page.Find(".plan-error").TextContent), WaitTimeout);
        Assert.Empty(Queue.Enqueued);
        Assert.False(Directory.Exists(BatchesRoot) && Directory.EnumerateFileSystemEntries(BatchesRoot).Any()); // nothing written

        page.Find(".latency-switch input").Change(false);
        page.WaitForAssertion(() => Assert.True(page.Find(".batches-field input").HasAttribute("disabled")), WaitTimeout);
        page.Find("button.start-batch").Click();
        page.WaitForAssertion(() => Assert.Single(Queue.Enqueued), WaitTimeout);
        Assert.Null(BatchPlan.Load(((BatchJob)Queue.Enqueued[0]).PlanPath).Latency);
        Assert.Empty(page.FindAll(".plan-error"));
    }

    [Fact]
    public async Task A_finished_batch_job_opens_its_summary_from_the_job_page()
    {
        var models = await Context.Services.GetRequiredService<IModelCatalog>().ListModelsAsync();
        var job = BatchJob.Create(models.Where(m => m.Name == "alpha").ToList(), new BatchSettings(), BatchesRoot);
        _state.Track(job);
        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.Jobs.JobDetail>(p => p.Add(x => x.Id, job.Id));
        Assert.Empty(page.FindAll(".open-batch")); // not before it has succeeded
        _state.MarkRunning(job.Id);
        _state.MarkSucceeded(job.Id);
        page.WaitForAssertion(() => Assert.Equal($"batch/{job.BatchName}", page.Find("a.open-batch").GetAttribute("href")), WaitTimeout);
    }

    [Fact]
    public void Finished_batches_are_listed_with_their_counts()
    {
        BatchFixtures.WriteBatch(BatchesRoot, "batch-20261203-120000-000", Path.Combine(_samples.ModelsRoot, "alpha"));
        var page = Context.Render<BatchPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".batches-table")), WaitTimeout);
        var link = page.Find(".batches-table a");
        Assert.Equal("batch/batch-20261203-120000-000", link.GetAttribute("href"));
        Assert.Equal("alpha × magnitude, random × 20%", link.TextContent.Trim());
        Assert.Contains("2 of 3 (1 failed)", page.Find(".batches-table").TextContent);
    }
}

/// <summary>A finished batch as its page shows it: the summary's rows, the Pareto chart, the downloads, what did not finish.</summary>
public sealed class BatchResultPageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();
    private readonly BatchFolders _folders;

    public BatchResultPageTests()
    {
        BatchFixtures.AddModel(_samples, "alpha");
        _folders = new BatchFolders(Path.Combine(_samples.Root, "batches"));
        Context.Services.AddSingleton(_folders);
    }

    public void Dispose() => _samples.Dispose();

    [Fact]
    public void Shows_the_rows_with_intervals_and_speed_ups_the_chart_the_downloads_and_the_failures()
    {
        string name = Path.GetFileName(BatchFixtures.WriteBatch(_folders.Root, "batch-20261203-120000-000", Path.Combine(_samples.ModelsRoot, "alpha")));
        var page = Context.Render<BatchResultPage>(p => p.Add(x => x.Name, name));

        Assert.Equal("alpha × magnitude, random × 20%", page.Find("h1").TextContent.Trim());
        var rows = page.FindAll(".batch-table tbody tr").Select(r => r.TextContent).ToList();
        Assert.Equal(2, rows.Count);
        Assert.Contains("original", rows[0]);
        Assert.Contains("120.500 [110.500, 130.500]", rows[0]);
        Assert.Contains("magnitude", rows[1]);
        Assert.Contains("20%", rows[1]);
        Assert.Contains("21.5%", rows[1]); // achieved
        Assert.Contains("78,500", rows[1]);
        Assert.Contains("131.250 [121.250, 141.250]", rows[1]);
        Assert.Contains("0.8123", rows[1]);
        Assert.Contains("1.50", rows[1]); // ORT ms at batch 1
        Assert.Contains("1.50x", rows[1]); // speed-up at batch 4: 6.0 / 4.0
        Assert.Contains("20.0%", rows[1]); // MAC reduction
        var headers = page.FindAll(".batch-table th").Select(h => h.TextContent.Trim()).ToList();
        Assert.Contains("ORT ms b4", headers);
        Assert.Contains("Realised / theoretical b4", headers);

        Assert.Equal($"api/batches/{name}/pareto.png", page.Find(".pareto-chart img").GetAttribute("src"));
        Assert.Equal($"api/batches/{name}/summary.md?download=1", page.Find("a.download-markdown").GetAttribute("href"));
        Assert.Equal($"api/batches/{name}/summary.csv?download=1", page.Find("a.download-csv").GetAttribute("href"));
        Assert.Contains("alpha random 20%: out of memory", page.Find(".batch-failed").TextContent);
        Assert.Contains("alpha random 20%", page.Find(".batch-unfinished").TextContent);
        Assert.Contains("2 of 3 items finished", page.Find(".batch-settings").TextContent);
    }

    [Theory]
    [InlineData("nothing-here")]
    [InlineData("..")]
    [InlineData("../batches")]
    [InlineData("unfinished")]
    public void An_unknown_unsafe_or_unfinished_name_shows_no_batch(string name)
    {
        BatchFixtures.WriteBatch(_folders.Root, "real", Path.Combine(_samples.ModelsRoot, "alpha"));
        Directory.CreateDirectory(Path.Combine(_folders.Root, "unfinished")); // no summary.md yet
        var page = Context.Render<BatchResultPage>(p => p.Add(x => x.Name, name));
        Assert.NotNull(page.Find(".no-batch"));
    }
}
