using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Pipeline;
using DiffusionPrune.Pruning;
using DiffusionPrune.Runtime;
using DiffusionPrune.Training;
using static TorchSharp.torch;

namespace DiffusionPrune.Batch;

/// <summary>How a batch runs; the plan says what.</summary>
public sealed record BatchRunOptions
{
    /// <summary>Run every item again, even those finished with the same settings (their folders are emptied first).</summary>
    public bool Force { get; init; }

    /// <summary>Where pruning and evaluation run; latency is always timed on the CPU (ONNX Runtime's CPU session's peer).</summary>
    public Device? Device { get; init; }

    /// <summary>One line per step of each item.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>The stages' progress within the current item (EcoDiff iterations, images sampled, ...).</summary>
    public IProgress<StageProgress>? Progress { get; init; }

    /// <summary>Checked between the steps of an item; an item cut short leaves no marker and is redone next time.</summary>
    public CancellationToken Cancellation { get; init; }

    /// <summary>Run only this share of the items (<c>--shard i/N</c>); a sharded run leaves the summary to <see cref="BatchRunner.Summarize"/>.</summary>
    public BatchShard? Shard { get; init; }

    /// <summary>How long another worker's claim on an item lives without a refresh before it counts as abandoned.</summary>
    public TimeSpan ClaimLease { get; init; } = ItemClaim.DefaultLease;
}

/// <summary>
/// What a run did: items run now, items skipped as already finished, items that failed, the summary files (null for a
/// sharded run), and items another worker held.
/// </summary>
public sealed record BatchRunResult(int Ran, int Skipped, IReadOnlyList<(BatchItem Item, string Error)> Failed, BatchSummaryFiles? Summary,
    int HeldElsewhere = 0);

/// <summary>
/// Runs a <see cref="BatchPlan"/>: for each model its original and every method x target, each item
/// pruned (not the original) → evaluated (the original as SSIM reference) → exported as a bundle → timed in ONNX Runtime
/// (and TorchSharp), in its own folder. An item is finished when its <see cref="ItemFileName"/> exists; that file is
/// written last and atomically, holding every result, so an interrupted run resumes where it stopped: finished items
/// with the same settings are skipped, a half-finished one is started over. Then summary.md, summary.csv and
/// pareto.png are written from the item files (see <see cref="BatchSummary"/>).
/// </summary>
public static class BatchRunner
{
    public const string ItemFileName = "item.json";
    public const string ItemFormat = "dprune-batch-item/1";
    public const string ModelFolderName = "model";
    public const string DistilledFolderName = "distilled";
    public const string BundleFolderName = "bundle";
    public const string OnnxCacheFolderName = "onnx-cache";


    public static BatchRunResult Run(BatchPlan plan, BatchRunOptions? options = null) => RunAsync(plan, options).GetAwaiter().GetResult();

    /// <summary>
    /// Runs the plan through one <see cref="DiffusionPipeline"/>: each model is loaded once and held while its items run
    /// (the original for every prune and as the SSIM reference), and each pruned model goes from the prune stage to
    /// evaluation, export and timing in memory.
    /// </summary>
    public static async Task<BatchRunResult> RunAsync(BatchPlan plan, BatchRunOptions? options = null)
    {
        options ??= new BatchRunOptions();
        var log = options.Log ?? (_ => { });
        var items = plan.Items();
        Directory.CreateDirectory(plan.Output);
        var shard = options.Shard is { Count: > 1 } s ? s : null;
        log($"batch {Path.GetFileName(plan.PlanPath)}: {items.Count} items ({plan.Models.Count} model(s) x (original + {plan.Methods.Count} method(s) x {plan.Targets.Count} target(s))) in {plan.Output}" +
            (shard is null ? "" : $"; shard {shard} runs {Enumerable.Range(0, items.Count).Count(shard.Contains)} of them"));
        int ran = 0, skipped = 0, held = 0;
        var failed = new List<(BatchItem, string)>();
        using var pipeline = new DiffusionPipeline(options.Device ?? CPU);
        string? heldModel = null;
        for (int i = 0; i < items.Count; i++)
        {
            options.Cancellation.ThrowIfCancellationRequested();
            if (shard is not null && !shard.Contains(i)) continue;
            var item = items[i];
            string prefix = $"[{i + 1}/{items.Count}] {item}";
            string folder = plan.FolderOf(item);
            var state = Inspect(plan, item);
            if (state == ItemState.Finished && !options.Force)
            {
                log($"{prefix}: finished earlier, skipped");
                skipped++;
                continue;
            }
            using var claim = ItemClaim.TryAcquire(ClaimPath(plan, item), options.ClaimLease, out var owner);
            if (claim is null)
            {
                log($"{prefix}: being run by another worker ({owner?.ToString() ?? "claim being written"}), skipped");
                held++;
                continue;
            }
            state = Inspect(plan, item); // another worker may have finished it between the first look and the claim
            if (state == ItemState.Finished && !options.Force)
            {
                log($"{prefix}: finished by another worker, skipped");
                skipped++;
                continue;
            }
            string? why = options.Force && state != ItemState.Missing ? "--force: running again"
                : state switch
                {
                    ItemState.Unfinished => "an earlier run stopped part-way; starting it over",
                    ItemState.Stale => "finished earlier with other settings; running again",
                    _ => null,
                };
            if (why is not null) log($"{prefix}: {why}");
            if (heldModel is not null && heldModel != item.Model.Path) pipeline.Forget(heldModel); // the plan moved on to its next model
            heldModel = item.Model.Path;
            try
            {
                if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
                await RunItem(pipeline, plan, item, folder, options, message => log($"{prefix}: {message}")).ConfigureAwait(false);
                ran++;
            }
            catch (OperationCanceledException)
            {
                log($"{prefix}: cancelled; it will be redone on the next run");
                throw;
            }
            catch (Exception e)
            {
                log($"{prefix}: FAILED: {e.Message}");
                failed.Add((item, e.Message));
            }
            finally
            {
                pipeline.Forget(Path.Combine(folder, ModelFolderName)); // the pruned model: done with
                pipeline.Forget(Path.Combine(folder, DistilledFolderName));
                NativeMemory.Trim();
            }
        }
        string counts = $"{ran} item(s) run, {skipped} skipped as finished, {failed.Count} failed" + (held > 0 ? $", {held} held by another worker" : "");
        if (shard is not null)
        {
            log($"shard {shard}: {counts}; when every shard has finished, `dprune batch {Path.GetFileName(plan.PlanPath)} --summarize` writes the summary");
            return new BatchRunResult(ran, skipped, failed, null, held);
        }
        var summary = Summarize(plan);
        log($"wrote {summary.Markdown}, {summary.Csv} and {summary.Pareto}");
        log(counts);
        return new BatchRunResult(ran, skipped, failed, summary, held);
    }

    /// <summary>summary.md, summary.csv and pareto.png from the item folders as they are (finished items; the rest are listed as unfinished).</summary>
    public static BatchSummaryFiles Summarize(BatchPlan plan) => BatchSummary.Write(plan);

    /// <summary>The item's claim file, beside its folder (the folder is emptied when an item starts over).</summary>
    public static string ClaimPath(BatchPlan plan, BatchItem item) => Path.TrimEndingDirectorySeparator(plan.FolderOf(item)) + ".claim";

    public enum ItemState
    {
        /// <summary>No folder: never started.</summary>
        Missing,

        /// <summary>A folder without a readable item file: a run stopped part-way (or the file was deleted).</summary>
        Unfinished,

        /// <summary>An item file written with settings other than the plan's now.</summary>
        Stale,

        /// <summary>An item file with the plan's settings.</summary>
        Finished,
    }

    public static ItemState Inspect(BatchPlan plan, BatchItem item)
    {
        string folder = plan.FolderOf(item);
        if (!Directory.Exists(folder)) return ItemState.Missing;
        var record = ReadItem(folder);
        if (record is null) return ItemState.Unfinished;
        return JsonNode.DeepEquals(record["settings"], plan.SettingsOf(item)) ? ItemState.Finished : ItemState.Stale;
    }

    /// <summary>The item file of a finished item, or null when there is none (or it is not ours).</summary>
    public static JsonObject? ReadItem(string folder)
    {
        string path = Path.Combine(folder, ItemFileName);
        if (!File.Exists(path)) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) is JsonObject o && o["format"]?.GetValue<string>() == ItemFormat ? o : null;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            return null;
        }
    }

    private static async Task RunItem(DiffusionPipeline pipeline, BatchPlan plan, BatchItem item, string folder, BatchRunOptions options, Action<string> log)
    {
        var watch = Stopwatch.StartNew();
        var cancel = options.Cancellation;
        var progress = options.Progress;
        Directory.CreateDirectory(folder);

        // 1. prune (the original is used as it is); the pruned model stays in the pipeline for the stages below
        string modelFolder = item.Model.Path;
        string? schedulerConfig = item.Model.SchedulerConfigPath;
        PruneReport? prune = null;
        if (!item.IsOriginal)
        {
            log($"pruning with {item.Method} to remove {item.Target:0.##%} of the parameters");
            modelFolder = Path.Combine(folder, ModelFolderName);
            prune = (await pipeline.PruneAsync(new PruneRequest
            {
                ModelPath = item.Model.Path,
                Method = item.Method!,
                TargetParams = item.Target!.Value,
                OutputPath = modelFolder,
                SchedulerConfigPath = item.Model.SchedulerConfigPath,
                Steps = plan.Prune.Steps,
                Iterations = plan.Prune.Iterations,
                Calibration = plan.Prune.Calibration,
                Seed = plan.Prune.Seed,
                Scope = plan.Prune.Scope,
                Budget = plan.Prune.Budget,
                Selection = plan.Prune.Selection,
                RoundTo = Pruning.Importance.ImportanceCriteria.Find(item.Method!) is { RemovesLayers: true } ? 1 : plan.Prune.RoundTo, // widths only
                GuidanceIfConditional = plan.Eval.GuidanceScale, // EcoDiff calibrates as the plan samples
            }, progress, cancel).ConfigureAwait(false)).Report;
            schedulerConfig = null; // the pruned folder holds a copy
            log(string.Create(CultureInfo.InvariantCulture, $"removed {prune.AchievedParams:0.0%} of the parameters ({prune.ParametersBefore:N0} -> {prune.ParametersAfter:N0}) in {prune.Seconds:F1} s"));
        }
        cancel.ThrowIfCancellationRequested();

        // 1b. optionally distil the pruned model from its original; the distilled model is the one evaluated, exported and timed
        JsonObject? distilled = null;
        if (!item.IsOriginal && plan.Distill is { } d)
        {
            string student = modelFolder;
            modelFolder = Path.Combine(folder, DistilledFolderName);
            log($"distilling ({BatchDistillSettings.KdName(d.Kd)} KD, {d.Steps} steps of {d.BatchSize} images) from the original");
            var result = await pipeline.DistillAsync(new DistillRequest
            {
                StudentPath = student,
                TeacherPath = item.Model.Path,
                OutputPath = modelFolder,
                Kd = d.Kd,
                Steps = d.Steps,
                BatchSize = d.BatchSize,
                LearningRate = d.LearningRate,
                Data = d.Data,
                Seed = d.Seed,
            }, progress, cancel).ConfigureAwait(false);
            distilled = new JsonObject
            {
                ["folder"] = DistilledFolderName,
                ["kd"] = BatchDistillSettings.KdName(d.Kd),
                ["steps"] = result.Steps,
                ["images"] = (long)result.Steps * d.BatchSize,
                ["final_loss"] = result.FinalLoss,
                ["seconds"] = Math.Round(result.WallTime.TotalSeconds, 2),
            };
            log(string.Create(CultureInfo.InvariantCulture, $"distilled: {result.Steps} steps, final loss {result.FinalLoss:F4}, in {result.WallTime.TotalSeconds:F1} s"));
        }
        cancel.ThrowIfCancellationRequested();

        // 2. evaluate, with the original as the paired-SSIM reference
        log($"evaluating: {plan.Eval.Samples} samples x {plan.Eval.Steps} {plan.Eval.Scheduler} steps" + (item.IsOriginal ? "" : ", and the original from the same noise") +
            (plan.Eval.Runtime == "onnx" ? ", in ONNX Runtime" : ""));
        var request = new EvalRequest
        {
            ModelPath = modelFolder,
            SchedulerConfigPath = schedulerConfig,
            SchedulerName = plan.Eval.Scheduler,
            Samples = plan.Eval.Samples,
            Steps = plan.Eval.Steps,
            GuidanceScale = plan.Eval.GuidanceScale,
            Seed = plan.Eval.Seed,
            BatchSize = plan.Eval.BatchSize,
            ReferenceModelPath = item.IsOriginal ? null : item.Model.Path,
            FeatureNetFolder = plan.Eval.FeatureNetFolder,
            BootstrapResamples = plan.Eval.BootstrapResamples,
        };
        // in ONNX Runtime: each model's bundle, exported once into the output's cache (keyed by the model's hash) and reused
        if (plan.Eval.Runtime == "onnx")
            request = await OnnxBundleCache.ForOnnxAsync(request, Path.Combine(plan.Output, OnnxCacheFolderName), log, cancel).ConfigureAwait(false);
        var eval = await pipeline.EvaluateAsync(request, progress, cancel).ConfigureAwait(false);
        // beside the pruned model, so the bundle's model card lists it (the original's folder is the user's: left alone)
        if (!item.IsOriginal) eval.Save(Path.Combine(modelFolder, ModelFolder.EvalReport));
        string ssim = eval.Ssim is double value ? string.Create(CultureInfo.InvariantCulture, $", SSIM to the original {value:F4}") : "";
        log(string.Create(CultureInfo.InvariantCulture, $"FID-proxy {eval.Fid.Value:F3} [{eval.Fid.Lower:F3}, {eval.Fid.Upper:F3}], KID {eval.Kid.Mean:F5}{ssim}"));
        cancel.ThrowIfCancellationRequested();

        // 3. export the bundle
        string bundle = Path.Combine(folder, BundleFolderName);
        log($"exporting {string.Join(", ", plan.ExportFormats.Select(f => f.ToString().ToLowerInvariant()))}");
        var export = await pipeline.ExportAsync(new ExportRequest
        {
            ModelPath = modelFolder,
            OutputPath = bundle,
            Formats = plan.ExportFormats,
            SchedulerConfigPath = schedulerConfig,
        }, progress, cancel).ConfigureAwait(false);
        cancel.ThrowIfCancellationRequested();

        // 4. latency: ONNX Runtime on the bundle's model.onnx, TorchSharp on the same model and inputs
        JsonObject? latency = null;
        if (plan.Latency is { } settings)
        {
            string batches = string.Join(", ", settings.Batches);
            log($"timing ONNX Runtime at batch {batches} ({settings.Warmup} warm-up + {settings.Runs} runs)");
            var onnx = await pipeline.OnnxLatencyAsync(Path.Combine(bundle, OnnxContract.FileName), settings.Batches, settings.ToOptions(), progress, cancel).ConfigureAwait(false);
            latency = new JsonObject { [LatencyResult.OnnxRuntimeCpu] = new JsonArray(onnx.Select(r => (JsonNode)r.ToJson()).ToArray()) };
            cancel.ThrowIfCancellationRequested();
            if (settings.Torch)
            {
                log($"timing TorchSharp at batch {batches}");
                var torch = await pipeline.TorchLatencyAsync(modelFolder, settings.Batches, settings.ToOptions(), progress, cancel).ConfigureAwait(false);
                latency[LatencyResult.TorchSharp] = new JsonArray(torch.Select(r => (JsonNode)r.ToJson()).ToArray());
            }
            log(string.Join("; ", onnx.Select(r => string.Create(CultureInfo.InvariantCulture, $"ONNX Runtime batch {r.Batch}: {r.MedianMs:F2} ms"))));
        }
        cancel.ThrowIfCancellationRequested();

        // 5. the marker: everything, written last and atomically
        var record = new JsonObject
        {
            ["format"] = ItemFormat,
            ["item"] = item.RelativeFolder.Replace('\\', '/'),
            ["model"] = item.Model.Name,
            ["method"] = item.Method ?? BatchItem.OriginalName,
            ["target_removed_params"] = item.Target,
            ["achieved_removed_params"] = prune?.AchievedParams ?? 0.0,
            ["parameters"] = eval.Parameters,
            ["macs"] = eval.Macs,
            ["settings"] = plan.SettingsOf(item),
            ["model_folder"] = item.IsOriginal ? Path.GetFullPath(item.Model.Path) : distilled is null ? ModelFolderName : DistilledFolderName,
            ["prune"] = prune?.ToJson(),
            ["distill"] = distilled,
            ["eval"] = eval.ToJson(),
            ["export"] = new JsonObject
            {
                ["folder"] = BundleFolderName,
                ["files"] = new JsonArray(export.Files.Select(f => (JsonNode)f).ToArray()),
            },
            ["latency"] = latency,
            ["seconds"] = Math.Round(watch.Elapsed.TotalSeconds, 2),
            ["finished_at"] = DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture),
        };
        WriteAtomically(Path.Combine(folder, ItemFileName), Formats.ReportJson.ToText(record));
        log(string.Create(CultureInfo.InvariantCulture, $"done in {watch.Elapsed.TotalSeconds:F1} s"));
    }

    /// <summary>Writes beside the target and renames over it, so a reader sees the old file or the whole new one.</summary>
    internal static void WriteAtomically(string path, string text) => Runtime.AtomicFile.Replace(path, text);
}
