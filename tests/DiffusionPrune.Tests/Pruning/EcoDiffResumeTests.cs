using System.Diagnostics;
using System.Globalization;
using DiffusionPrune.Formats;
using DiffusionPrune.Pruning;
using DiffusionPrune.Tests.Cli;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>A long EcoDiff run is expensive to lose: it checkpoints, and a resumed run ends where the uninterrupted one does.</summary>
public class EcoDiffResumeTests
{
    private static string SchedulerConfigPath => Fixtures.Diffusers("unet2d-small", "scheduler_config.json");

    [Fact]
    public void A_run_stopped_mid_way_and_resumed_gives_the_scores_and_history_of_an_uninterrupted_run()
    {
        using var temp = Fixtures.Temp();
        using var model = EcoDiffTests.TinyUNet(31);
        var groups = PrunableGroups.Of(model);
        var context = new ImportanceContext(SchedulerConfigPath, Steps: 2, CalibrationSamples: 4, Seed: 0, Device: CPU);
        var options = new EcoDiffOptions { Iterations = 7, BatchSize = 2, Beta = 0.5, LearningRate = 0.3, CheckpointEvery = 2 };

        var straight = new EcoDiffImportance(options);
        var expected = straight.Score(model, groups, context);

        string folder = temp.File("checkpoint");
        using var cancel = new CancellationTokenSource();
        var stopped = new EcoDiffImportance(options with { CheckpointFolder = folder }, it => { if (it.Iteration == 5) cancel.Cancel(); });
        Assert.Throws<OperationCanceledException>(() => stopped.Score(model, groups, context with { Cancellation = cancel.Token }));
        groups.ClearMasks();
        Assert.True(EcoDiffCheckpoint.Exists(folder)); // taken after iteration 4

        var resumed = new EcoDiffImportance(options with { CheckpointFolder = folder, Resume = true });
        var scores = resumed.Score(model, groups, context);
        groups.ClearMasks();

        Assert.Equal(expected.ByGroup.Keys, scores.ByGroup.Keys);
        foreach (var (path, values) in expected.ByGroup)
            for (int i = 0; i < values.Length; i++)
                Assert.True(Math.Abs(values[i] - scores[path][i]) <= 1e-5f * Math.Max(1, Math.Abs(values[i])), $"{path}[{i}]: {values[i]} vs {scores[path][i]}");
        Assert.Equal(straight.History.Select(h => h.Iteration), resumed.History.Select(h => h.Iteration));
        foreach (var (a, b) in straight.History.Zip(resumed.History))
            Assert.Equal(a.Loss, b.Loss, 5);

        // Other settings do not resume from it.
        var other = new EcoDiffImportance(options with { CheckpointFolder = folder, Resume = true, Beta = 0.7 });
        Assert.Contains("other settings", Assert.Throws<ArgumentException>(() => other.Score(model, groups, context)).Message);
        groups.ClearMasks();
        var missing = new EcoDiffImportance(options with { CheckpointFolder = temp.File("none"), Resume = true });
        Assert.Throws<FileNotFoundException>(() => missing.Score(model, groups, context));
        groups.ClearMasks();
    }

    [Fact]
    public async Task Dprune_prune_killed_with_sigkill_resumes_with_resume_and_writes_the_uninterrupted_runs_plan()
    {
        using var temp = Fixtures.Temp();
        string model = PruneCliTests.TinyModel(temp);
        string[] common = ["prune", "--model", model, "--method", "ecodiff", "--target-params", "0.2", "--steps", "2", "--calibration", "2",
            "--iterations", "100", "--checkpoint-every", "5", "--beta", "0.5"];
        var (code, _, stderr) = CliTests.Dprune([.. common, "--output", temp.File("straight")]);
        Assert.True(code == 0, stderr);

        string output = temp.File("killed");
        using (var process = Process.Start(CliTests.DprunStartInfo([.. common, "--output", output]))!)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            string? line;
            var seen = new List<string>();
            while ((line = await process.StandardError.ReadLineAsync()) is not null)
            {
                seen.Add(line);
                if (line.StartsWith("iteration 40/100", StringComparison.Ordinal)) break; // a log prints every 10%: 10, 20, 30, 40, ...
            }
            Assert.True(line is not null, string.Join("\n", seen));
            process.Kill(); // SIGKILL: no handler runs, nothing is tidied up
            await process.WaitForExitAsync();
            await stdout;
        }
        Assert.False(Directory.Exists(output));
        Assert.True(EcoDiffCheckpoint.Exists(EcoDiffCheckpoint.FolderFor(output)));

        (code, var resumedOut, stderr) = CliTests.Dprune([.. common, "--output", output, "--resume"]);
        Assert.True(code == 0, stderr);
        var resumedAt = System.Text.RegularExpressions.Regex.Match(stderr, @"resumed after iteration (\d+)");
        Assert.True(resumedAt.Success, stderr);
        Assert.InRange(int.Parse(resumedAt.Groups[1].Value, CultureInfo.InvariantCulture), 40, 99);
        Assert.DoesNotContain("iteration 1/100", stderr);
        Assert.Equal(File.ReadAllText(Path.Combine(temp.File("straight"), ModelFolder.PrunePlan)), File.ReadAllText(Path.Combine(output, ModelFolder.PrunePlan)));
        Assert.False(Directory.Exists(EcoDiffCheckpoint.FolderFor(output))); // done: the checkpoint is gone
        Assert.Contains("ecodiff: removed", resumedOut);

        (code, _, stderr) = CliTests.Dprune([.. common, "--output", temp.File("fresh"), "--resume"]);
        Assert.Equal(2, code);
        Assert.Contains("no EcoDiff checkpoint", stderr);
        (code, _, stderr) = CliTests.Dprune("prune", "--model", model, "--method", "magnitude", "--target-params", "0.2", "--output", temp.File("m"), "--resume");
        Assert.Equal(2, code);
        Assert.Contains("--resume continues an EcoDiff run", stderr);
    }
}
