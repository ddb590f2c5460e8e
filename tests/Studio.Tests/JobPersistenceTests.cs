using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pruning;
using DiffusionPrune.Studio.Api;
using DiffusionPrune.Studio.Jobs;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;

namespace DiffusionPrune.Studio.Tests;

/// <summary>The job page of an interrupted job offers Resume, which asks the queue to run it again.</summary>
public sealed class InterruptedJobPageTests : MudTestContext, IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    public void Dispose() => _samples.Dispose();

    [Fact]
    public void An_interrupted_job_shows_resume_and_the_button_resumes_it()
    {
        string db = Path.Combine(_samples.Root, "jobs.db");
        var before = new JobStateService(store: new SqliteJobStore(db));
        var job = new PruneJob(new PruneRequest { ModelPath = "/m", Method = "ecodiff", TargetParams = 0.2, OutputPath = "/o/pruned/m" });
        before.Track(job);
        before.MarkRunning(job.Id);
        var state = new JobStateService(store: new SqliteJobStore(db)); // the restart
        Context.Services.AddSingleton(state);
        Context.Services.AddSingleton<IJobQueue, JobsPageTests.RecordingJobQueue>();
        Context.Services.AddSingleton<Catalog.IModelCatalog>(new Catalog.FileSystemModelCatalog(_samples.Root));

        var page = Context.Render<DiffusionPrune.Studio.Components.Pages.Jobs.JobDetail>(p => p.Add(x => x.Id, job.Id));
        Assert.Contains("Interrupted", page.Find(".job-status").TextContent);
        Assert.Empty(page.FindAll(".cancel-job"));
        page.Find(".resume-job").Click();
        Assert.Equal([job.Id], ((JobsPageTests.RecordingJobQueue)Context.Services.GetRequiredService<IJobQueue>()).Resumed);
        page.WaitForAssertion(() => Assert.Contains("cannot be resumed", page.Find(".resume-error").TextContent), WaitTimeout); // the recording queue refuses
    }
}

/// <summary>Jobs kept in SQLite across restarts: finished results survive, cut-off jobs become interrupted and resume.</summary>
public sealed class JobPersistenceTests : IDisposable
{
    private readonly TempSamplesFolder _samples = new();

    private string Database => Path.Combine(_samples.Root, "data", "jobs.db");

    public void Dispose() => _samples.Dispose();

    private static PruneJob Job(string output = "/o/pruned/m") =>
        new(new PruneRequest { ModelPath = "/m", Method = "ecodiff", TargetParams = 0.2, OutputPath = output, Iterations = 7 });

    [Fact]
    public void A_finished_job_survives_a_restart_with_its_result_log_figures_and_preview()
    {
        var state = new JobStateService(store: new SqliteJobStore(Database));
        var job = Job();
        state.Track(job);
        state.MarkRunning(job.Id);
        state.ReportProgress(job.Id, new JobProgress(0.5, "iteration 1", new Dictionary<string, double> { ["loss"] = 0.25 }, Step: 1, Stage: "prune"));
        state.ReportProgress(job.Id, new JobProgress(0.9, "half", Preview: new PreviewImage([1, 2, 3], 4, 5, "grid")));
        state.SetResult(job.Id, "removed 20 %");
        state.MarkSucceeded(job.Id);

        var reloaded = new JobStateService(store: new SqliteJobStore(Database)).Find(job.Id)!;
        Assert.Equal(JobStatus.Succeeded, reloaded.Status);
        Assert.Equal("removed 20 %", reloaded.Result);
        Assert.Equal("prune", reloaded.Kind);
        Assert.Equal("/o/pruned/m", reloaded.OutputPath);
        Assert.Equal(1.0, reloaded.Progress);
        Assert.Equal(0.25, Assert.Single(reloaded.Points).Values["loss"]);
        Assert.Equal([1, 2, 3], reloaded.Preview!.Png);
        Assert.Equal("grid", reloaded.Preview.Caption);
        Assert.Contains("half", reloaded.Lines);
        Assert.Equal(job.Name, reloaded.Name);
    }

    [Fact]
    public void A_job_running_or_queued_when_the_process_died_is_interrupted_and_keeps_its_request()
    {
        var state = new JobStateService(store: new SqliteJobStore(Database));
        var running = Job("/o/pruned/a");
        var queued = Job("/o/pruned/b");
        state.Track(running);
        state.Track(queued);
        state.MarkRunning(running.Id);
        // no clean shutdown: as after kill -9, the store still says running and queued

        var restarted = new JobStateService(store: new SqliteJobStore(Database));
        foreach (var id in new[] { running.Id, queued.Id })
        {
            var job = restarted.Find(id)!;
            Assert.Equal(JobStatus.Interrupted, job.Status);
            Assert.Contains("can be resumed", job.Message);
            Assert.True(job.IsFinished);
            Assert.Equal("interrupted", (string?)StudioApi.Describe(job)["status"]);
        }
        var resumed = Assert.IsType<PruneJob>(StudioJobs.Resume("prune", restarted.RequestOf(running.Id)!, running.Id));
        Assert.Equal(running.Id, resumed.Id);
        Assert.Equal(running.Request with { Resume = false }, resumed.Request); // no checkpoint was written: it starts again
        Assert.Throws<ArgumentException>(() => StudioJobs.Resume("self-check", "{}", Guid.NewGuid()));
    }

    private Task<WebApplication> StartStudioAsync() =>
        TestModels.StartStudioAsync(_samples.Root, new Dictionary<string, string?> { ["Studio:DataFolder"] = Path.Combine(_samples.Root, "data") });

    [Fact]
    public async Task An_ecodiff_job_cut_off_by_a_restart_resumes_from_its_checkpoint_and_finishes()
    {
        TestModels.SaveTinyUNet(Path.Combine(_samples.ModelsRoot, "tiny"), sampleSize: 16);

        string id, output;
        await using (var first = await StartStudioAsync())
        {
            var client = first.GetTestClient();
            var response = await client.PostAsync("/api/jobs", new StringContent(
                """{"kind": "prune", "model": "tiny", "method": "ecodiff", "target_params": 0.2, "iterations": 40, "steps": 2, "calibration": 4}""",
                Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            id = (string)JsonNode.Parse(await response.Content.ReadAsStringAsync())!["id"]!;
            var state = first.Services.GetRequiredService<JobStateService>();
            output = state.Find(Guid.Parse(id))!.OutputPath!;
            var deadline = DateTime.UtcNow.AddMinutes(6);
            while (!EcoDiffCheckpoint.Exists(EcoDiffCheckpoint.FolderFor(output)) && DateTime.UtcNow < deadline)
                await Task.Delay(50);
            Assert.True(EcoDiffCheckpoint.Exists(EcoDiffCheckpoint.FolderFor(output)), state.Find(Guid.Parse(id))!.Message);
            await first.StopAsync(); // the Studio stops mid-run
            Assert.Equal(JobStatus.Interrupted, state.Find(Guid.Parse(id))!.Status);
        }

        await using var second = await StartStudioAsync();
        var api = second.GetTestClient();
        var job = JsonNode.Parse(await api.GetStringAsync($"/api/jobs/{id}"))!;
        Assert.Equal("interrupted", (string?)job["status"]);
        Assert.Equal(HttpStatusCode.Conflict, (await api.DeleteAsync($"/api/jobs/{id}")).StatusCode);

        Assert.Equal(HttpStatusCode.Accepted, (await api.PostAsync($"/api/jobs/{id}/resume", null)).StatusCode);
        var until = DateTime.UtcNow.AddMinutes(6);
        do
        {
            await Task.Delay(200);
            job = JsonNode.Parse(await api.GetStringAsync($"/api/jobs/{id}"))!;
        }
        while ((string?)job["status"] is "queued" or "running" && DateTime.UtcNow < until);
        Assert.True((string?)job["status"] == "succeeded", job.ToJsonString());
        var lines = second.Services.GetRequiredService<JobStateService>().Find(Guid.Parse(id))!.Lines;
        Assert.Contains(lines, line => line.Contains("resumed after iteration", StringComparison.Ordinal));
        Assert.True(File.Exists(Path.Combine(output, ModelFolder.Config)));
        Assert.Equal(HttpStatusCode.Conflict, (await api.PostAsync($"/api/jobs/{id}/resume", null)).StatusCode); // succeeded now
        Assert.Equal(HttpStatusCode.NotFound, (await api.PostAsync($"/api/jobs/{Guid.NewGuid()}/resume", null)).StatusCode);
    }
}
