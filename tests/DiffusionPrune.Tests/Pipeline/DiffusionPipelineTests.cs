using DiffusionPrune.Evaluation;
using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pruning;
using DiffusionPrune.Runtime;
using SixLabors.ImageSharp;
using Xunit;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pipeline;

public class DiffusionPipelineTests
{
    private static string TinyModel(TempFolder temp, string name = "tiny") => Fixtures.TinyEvaluableUNet(temp, name);

    private sealed class Recorder : IProgress<StageProgress>
    {
        public List<StageProgress> Seen { get; } = [];
        public Action<StageProgress>? Then { get; init; }

        public void Report(StageProgress value)
        {
            lock (Seen) Seen.Add(value);
            Then?.Invoke(value);
        }
    }

    private static EvalRequest SmallEval(string model, string? reference) => new()
    {
        ModelPath = model, ReferenceModelPath = reference, Samples = 8, Steps = 2, BatchSize = 8, BootstrapResamples = 20, Seed = 3,
    };

    [Fact]
    public async Task Prune_evaluate_export_hand_the_models_over_in_memory_and_load_each_folder_once()
    {
        using var temp = Fixtures.Temp();
        string original = TinyModel(temp);
        string output = temp.File("pruned");
        var progress = new Recorder();
        using var pipeline = new DiffusionPipeline();

        var pruned = await pipeline.PruneAsync(new PruneRequest { ModelPath = original, Method = "magnitude", TargetParams = 0.2, OutputPath = output }, progress);
        Assert.True(File.Exists(Path.Combine(output, ModelFolder.PruneReport)));
        Assert.Equal(pruned.Report.ParametersAfter, pruned.Model.Torch.ParameterCount());
        // The saved weights are gone: evaluating and exporting can only use the model held in memory.
        File.Delete(Path.Combine(output, ModelFolder.Weights));
        var eval = await pipeline.EvaluateAsync(SmallEval(output, original), progress);
        var bundle = await pipeline.ExportAsync(new ExportRequest { ModelPath = output, OutputPath = temp.File("bundle"), Formats = [ExportFormat.Onnx] }, progress);

        Assert.Equal(pruned.Report.ParametersAfter, eval.Parameters);
        Assert.Equal(pruned.Report.ParametersAfter, bundle.Parameters);
        Assert.NotNull(eval.Ssim);
        // One load for the original (the prune's source and the SSIM reference); the pruned model was never read back.
        var loads = progress.Seen.Where(p => p.Stage == PipelineStage.Load && p.Fraction == 1).ToList();
        Assert.Single(loads);
        Assert.Contains("tiny", loads[0].Message);
        Assert.Equal(2, pipeline.Models.Count);

        // The same evaluation from the folders (the pre-pipeline path) gives the same figures.
        DiffusersModelLoader.Save(pruned.Model.Torch, output);
        var fromDisk = ModelEvaluator.Evaluate(SmallEval(output, original), CPU);
        Assert.Equal(fromDisk.Fid.Value, eval.Fid.Value, 6);
        Assert.Equal(fromDisk.Ssim!.Value, eval.Ssim!.Value, 6);
    }

    [Fact]
    public async Task Every_stage_reports_through_one_progress_type_with_named_metrics_and_previews()
    {
        using var temp = Fixtures.Temp();
        string model = TinyModel(temp);
        var progress = new Recorder();
        using var pipeline = new DiffusionPipeline();
        await pipeline.PruneAsync(new PruneRequest
        {
            ModelPath = model, Method = "ecodiff", TargetParams = 0.1, Steps = 2, Iterations = 3, Calibration = 2, OutputPath = temp.File("eco"),
        }, progress);
        var iterations = progress.Seen.Where(p => p.Stage == PipelineStage.Prune && p.Done is not null).ToList();
        Assert.Equal([1L, 2L, 3L], iterations.Select(p => p.Done!.Value));
        Assert.All(iterations, p => Assert.Equal(3L, p.Total));
        Assert.All(iterations, p => Assert.True(double.IsFinite(p.Metrics!["loss"]) && p.Metrics["expected_kept_fraction"] is > 0 and <= 1));
        Assert.Equal(1.0, iterations[^1].Fraction);

        string png = temp.File("grid.png");
        await pipeline.SampleAsync(new SampleRequest { ModelPath = model, Steps = 3, Count = 4, OutputPath = png }, progress);
        var steps = progress.Seen.Where(p => p.Stage == PipelineStage.Sample && p.Done is not null).Select(p => p.Done!.Value).ToList();
        Assert.Equal([1L, 2L, 3L], steps);
        var preview = Assert.Single(progress.Seen, p => p.Stage == PipelineStage.Sample && p.Preview is not null).Preview!;
        using var decoded = Image.Load(preview.Png);
        Assert.Equal((preview.Width, preview.Height), (decoded.Width, decoded.Height));
        using var written = Image.Load(png);
        Assert.Equal((written.Width, written.Height), (decoded.Width, decoded.Height)); // the preview is the written grid

        await pipeline.EvaluateAsync(SmallEval(model, null), progress);
        Assert.Contains(progress.Seen, p => p.Stage == PipelineStage.Evaluate && p.Preview is not null);
        Assert.Contains(progress.Seen, p => p.Stage == PipelineStage.Evaluate && p.Metrics?.ContainsKey("fid_proxy") == true);
    }

    [Fact]
    public async Task Cancelling_a_prune_stops_within_an_iteration_and_leaves_no_output_folder()
    {
        using var temp = Fixtures.Temp();
        string model = TinyModel(temp);
        string output = temp.File("cancelled");
        using var cancel = new CancellationTokenSource();
        var progress = new Recorder { Then = p => { if (p.Done == 2 && p.Stage == PipelineStage.Prune) cancel.Cancel(); } };
        using var pipeline = new DiffusionPipeline();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => pipeline.PruneAsync(new PruneRequest
        {
            ModelPath = model, Method = "ecodiff", TargetParams = 0.1, Steps = 2, Iterations = 50, Calibration = 2, OutputPath = output,
        }, progress, cancel.Token));
        Assert.Equal(2, progress.Seen.Count(p => p.Stage == PipelineStage.Prune && p.Done is not null)); // stopped before iteration 3
        Assert.False(Directory.Exists(output));
        Assert.DoesNotContain(Directory.EnumerateFileSystemEntries(temp.Path), e => Path.GetFileName(e).StartsWith(AtomicFolder.PartialPrefix, StringComparison.Ordinal));

        // The pipeline is still usable, and the original it holds was left unmasked: a fresh run gives the same plan as a fresh pipeline.
        var again = await pipeline.PruneAsync(new PruneRequest { ModelPath = model, Method = "magnitude", TargetParams = 0.2, OutputPath = output });
        using var fresh = new DiffusionPipeline();
        var reference = await fresh.PruneAsync(new PruneRequest { ModelPath = model, Method = "magnitude", TargetParams = 0.2, OutputPath = temp.File("ref") });
        Assert.Equal(reference.Report.ParametersAfter, again.Report.ParametersAfter);
        Assert.Equal(File.ReadAllText(Path.Combine(temp.File("ref"), ModelFolder.PrunePlan)), File.ReadAllText(Path.Combine(output, ModelFolder.PrunePlan)));
    }

    [Fact]
    public async Task Cancelled_sampling_and_evaluation_stop_at_a_step_and_leave_earlier_outputs_as_they_were()
    {
        using var temp = Fixtures.Temp();
        string model = TinyModel(temp);
        string png = temp.File("grid.png");
        File.WriteAllBytes(png, [1, 2, 3]); // an earlier output
        using var cancel = new CancellationTokenSource();
        var progress = new Recorder { Then = p => { if (p.Done == 2) cancel.Cancel(); } };
        using var pipeline = new DiffusionPipeline();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            pipeline.SampleAsync(new SampleRequest { ModelPath = model, Steps = 10, Count = 2, OutputPath = png }, progress, cancel.Token));
        Assert.Equal(2, progress.Seen.Count(p => p.Stage == PipelineStage.Sample && p.Done is not null));
        Assert.Equal(new byte[] { 1, 2, 3 }, File.ReadAllBytes(png));
        Assert.Single(Directory.EnumerateFiles(temp.Path)); // no temporary left beside it

        using var cancelEval = new CancellationTokenSource();
        var evalProgress = new Recorder { Then = p => { if (p.Stage == PipelineStage.Evaluate && p.Done == 4) cancelEval.Cancel(); } };
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            pipeline.EvaluateAsync(SmallEval(model, null) with { BatchSize = 4, Samples = 16 }, evalProgress, cancelEval.Token));
        Assert.Single(evalProgress.Seen, p => p.Stage == PipelineStage.Evaluate && p.Done is not null); // one batch of four, then stopped
    }

    [Fact]
    public async Task An_output_folder_is_replaced_only_when_it_holds_an_earlier_output()
    {
        using var temp = Fixtures.Temp();
        string model = TinyModel(temp);
        using var pipeline = new DiffusionPipeline();

        string documents = temp.File("documents");
        Directory.CreateDirectory(documents);
        File.WriteAllText(Path.Combine(documents, "notes.txt"), "mine");
        var refused = await Assert.ThrowsAsync<ArgumentException>(() =>
            pipeline.PruneAsync(new PruneRequest { ModelPath = model, Method = "random", TargetParams = 0.2, OutputPath = documents }));
        Assert.Contains("not an earlier output", refused.Message);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(documents, "notes.txt")));

        await Assert.ThrowsAsync<ArgumentException>(() =>
            pipeline.PruneAsync(new PruneRequest { ModelPath = model, Method = "random", TargetParams = 0.2, OutputPath = model })); // the source itself

        string output = temp.File("out");
        await pipeline.PruneAsync(new PruneRequest { ModelPath = model, Method = "random", TargetParams = 0.2, OutputPath = output });
        File.WriteAllText(Path.Combine(output, "stale-eval.json"), "{}"); // a report of the earlier model
        var second = await pipeline.PruneAsync(new PruneRequest { ModelPath = model, Method = "magnitude", TargetParams = 0.3, OutputPath = output });
        Assert.False(File.Exists(Path.Combine(output, "stale-eval.json"))); // replaced whole, not merged
        Assert.Contains("magnitude", File.ReadAllText(Path.Combine(output, ModelFolder.PruneReport)));
        // the held model under that folder is the new one
        Assert.Equal(second.Report.ParametersAfter, Assert.Single(pipeline.Models, m => m.Prune is not null).Torch.ParameterCount());
    }

    [Fact]
    public void A_folder_writer_that_fails_leaves_the_earlier_output_and_no_sibling()
    {
        using var temp = Fixtures.Temp();
        string target = temp.File("bundle");
        Directory.CreateDirectory(target);
        File.WriteAllText(Path.Combine(target, "README.md"), "earlier");
        Assert.Throws<InvalidOperationException>(() => AtomicFolder.Write(target, "the bundle", _ => true, folder =>
        {
            File.WriteAllText(Path.Combine(folder, "README.md"), "half");
            throw new InvalidOperationException("disk full");
        }));
        Assert.Equal("earlier", File.ReadAllText(Path.Combine(target, "README.md")));
        Assert.Single(Directory.EnumerateFileSystemEntries(temp.Path));

        // a sibling left by a writer that was killed (its process is gone) is removed by the next write
        string leftover = Path.Combine(temp.Path, $"{AtomicFolder.PartialPrefix}bundle-999999999-{Guid.NewGuid():N}");
        Directory.CreateDirectory(leftover);
        // a write to another target whose name starts the same ("bundle-2") is not a leftover of "bundle"
        string other = Path.Combine(temp.Path, $"{AtomicFolder.PartialPrefix}bundle-2-999999999-{Guid.NewGuid():N}");
        Directory.CreateDirectory(other);
        AtomicFolder.Write(target, "the bundle", _ => true, folder => File.WriteAllText(Path.Combine(folder, "README.md"), "new"));
        Assert.Equal("new", File.ReadAllText(Path.Combine(target, "README.md")));
        Assert.False(Directory.Exists(leftover));
        Assert.True(Directory.Exists(other));
    }
}
