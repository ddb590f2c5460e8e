using System.Globalization;
using DiffusionPrune.Analysis;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using DiffusionPrune.Runtime;
using DiffusionPrune.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pipeline;

/// <summary>What the prune stage made: the smaller model, held by the pipeline under its output folder, and its report.</summary>
public sealed record PruneStageResult(LoadedModel Model, PruneReport Report);

/// <summary>
/// The one API every face drives (<c>dprune</c>, <see cref="Batch.BatchRunner"/>, the Studio): the stages Load, Sample,
/// Prune, Distill, Evaluate (models; Stable Diffusion pipelines against a reference), Export and Latency as async operations over the existing typed requests, each with a
/// <see cref="CancellationToken"/> and one progress type, <see cref="StageProgress"/>.
/// <para>
/// A pipeline holds the models its stages load or make, keyed by folder: a request that names a folder already held
/// uses the model in memory, so a prune → evaluate → export → time chain loads the original once and never reads the
/// pruned model back. Outputs (model folders, bundles, sample files) are written beside their target and renamed into
/// place when whole, so a cancelled or failed stage leaves no half-written output. Cancelling stops within one
/// iteration (EcoDiff), timestep (Taylor), sampling step or evaluation batch.
/// </para>
/// Stages of one pipeline run one at a time (they share its models), all on the pipeline's own worker thread: libtorch
/// keeps per-thread state (grad mode, an OpenMP thread team per calling thread), so a session's calls all come from one
/// thread rather than hopping between pool threads. Run independent sessions in separate pipelines.
/// </summary>
public sealed class DiffusionPipeline : IDisposable
{
    private readonly Dictionary<string, LoadedModel> _models = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly StageThread _worker = new();
    private bool _disposed;

    /// <param name="device">Where torch models load and run (default: the CPU).</param>
    public DiffusionPipeline(Device? device = null) => Device = device ?? CPU;

    public Device Device { get; }

    /// <summary>The models held now, by folder.</summary>
    public IReadOnlyCollection<LoadedModel> Models => _models.Values;

    /// <summary>
    /// The model at <paramref name="path"/> on <paramref name="backend"/> (torch: a diffusers folder; onnx: a bundle),
    /// loaded once and then held: later stages naming the same folder use it in memory.
    /// </summary>
    public Task<LoadedModel> LoadAsync(string path, string backend = "torch", string provider = "auto",
        IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() => Load(path, backend, provider, progress), cancel);

    /// <summary>
    /// Samples images (PNG grid) or a trajectory (safetensors) and sends the final images as a preview. A Stable Diffusion
    /// pipeline folder is sampled from <see cref="SampleRequest.Prompt"/> and decoded through its VAE
    /// (<see cref="StableDiffusionSampleRunner"/>); it is loaded for the request and not held.
    /// </summary>
    public Task<SampleResult> SampleAsync(SampleRequest request, IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            if (StableDiffusionPipeline.IsStableDiffusionFolder(request.ModelPath))
                return SampleStableDiffusion(request, progress, cancel);
            SampleRunner.RefusePrompt(request);
            EnsureFits(request.ModelPath, request.Backend, e => e.Inference(request.Count * (request.GuidanceScale > 1 ? 2 : 1)));
            var model = Load(request.ModelPath, request.Backend, request.Provider, progress);
            var result = SampleRunner.Run(request, model.Inference,
                (done, total) => progress?.Report(StageProgress.Step(PipelineStage.Sample, done, total, $"step {done}/{total}")), cancel);
            var preview = Preview(result.Final, $"{result.Final.shape[0]} samples, {request.Steps} steps, seed {request.Seed}");
            progress?.Report(new StageProgress(PipelineStage.Sample, 1, $"wrote {request.OutputPath}", Preview: preview));
            return result;
        }, cancel);

    private SampleResult SampleStableDiffusion(SampleRequest request, IProgress<StageProgress>? progress, CancellationToken cancel)
    {
        using var output = StableDiffusionSampleRunner.Run(request, Device,
            line => progress?.Report(StageProgress.Note(PipelineStage.Load, line)),
            (done, total) => progress?.Report(StageProgress.Step(PipelineStage.Sample, done, total, $"step {done}/{total}")), cancel);
        var preview = Preview(output.Image, string.Create(CultureInfo.InvariantCulture,
            $"{output.Image.shape[0]} images, {request.Steps} steps, guidance {request.GuidanceScale}, seed {request.Seed}"));
        progress?.Report(new StageProgress(PipelineStage.Sample, 1, $"wrote {request.OutputPath}", Preview: preview));
        return new SampleResult(output.Latents.clone(), output.Trajectory?.clone(), output.Timesteps);
    }

    /// <summary>
    /// Prunes the model at <see cref="PruneRequest.ModelPath"/> (held or loaded) and, when <see cref="PruneRequest.OutputPath"/>
    /// is set, saves the smaller model there. The smaller model is held under the output folder (or, without one, under
    /// a name of its own, in memory only) for the stages that follow.
    /// </summary>
    public Task<PruneStageResult> PruneAsync(PruneRequest request, IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            if (request.OutputPath is not null) PruneRunner.CheckOutput(request.ModelPath, request.OutputPath);
            EnsureFits(request.ModelPath, "torch", e => PruneRunner.MemoryNeed(e, request));
            var source = Load(request.ModelPath, "torch", "auto", progress);
            string schedulerPath = PruneRunner.SchedulerConfigOf(request);
            var started = DateTime.UtcNow;
            var pruned = PruneRunner.Prune(source.Torch, request, schedulerPath, Device,
                message => progress?.Report(StageProgress.Note(PipelineStage.Prune, message)),
                it =>
                {
                    var elapsed = DateTime.UtcNow - started;
                    var eta = TimeSpan.FromSeconds(elapsed.TotalSeconds / it.Iteration * (request.Iterations - it.Iteration));
                    progress?.Report(StageProgress.Step(PipelineStage.Prune, it.Iteration, request.Iterations,
                        string.Create(CultureInfo.InvariantCulture,
                            $"loss {it.Loss:F5} (recon {it.Reconstruction:F5}) expected kept {it.ExpectedKeptFraction:P1} beta {it.Beta:G3} eta {eta:hh\\:mm\\:ss}"),
                        new Dictionary<string, double>
                        {
                            ["loss"] = it.Loss,
                            ["reconstruction"] = it.Reconstruction,
                            ["regularizer"] = it.Regularizer,
                            ["expected_kept_fraction"] = it.ExpectedKeptFraction,
                            ["beta"] = it.Beta,
                            ["iteration_seconds"] = it.Seconds,
                            ["eta_seconds"] = eta.TotalSeconds,
                            ["peak_rss_bytes"] = it.PeakResidentBytes ?? double.NaN,
                        }));
                }, cancel);
            PruneReport report;
            string key;
            try
            {
                cancel.ThrowIfCancellationRequested();
                if (request.OutputPath is { } output)
                {
                    report = PruneRunner.Save(pruned, output, watch.Elapsed.TotalSeconds, cancel);
                    key = output;
                }
                else
                {
                    report = pruned.Report;
                    key = string.Create(CultureInfo.InvariantCulture, $"{System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(source.Path))}-{report.Method}-{request.TargetParams:0.##} (in memory)");
                }
            }
            catch
            {
                pruned.Dispose();
                throw;
            }
            var held = Hold(key, "torch", InferenceModel.Wrap(pruned.Model, key, owns: true, schedulerConfigPath: report.OutputPath is null ? schedulerPath : null), report);
            progress?.Report(new StageProgress(PipelineStage.Prune, 1, string.Create(CultureInfo.InvariantCulture,
                $"{report.Method}: removed {report.AchievedParams:P1} of the parameters ({report.ParametersBefore:N0} -> {report.ParametersAfter:N0})"),
                new Dictionary<string, double>
                {
                    ["achieved_removed_params"] = report.AchievedParams,
                    ["params_before"] = report.ParametersBefore,
                    ["params_after"] = report.ParametersAfter,
                    ["macs_before"] = report.MacsBefore,
                    ["macs_after"] = report.MacsAfter,
                }));
            return new PruneStageResult(held, report);
        }, cancel);

    /// <summary>
    /// Distils the student at <see cref="DistillRequest.StudentPath"/> (held or loaded: a pruned model from
    /// <see cref="PruneAsync"/> goes on in memory) from its teacher into <see cref="DistillRequest.OutputPath"/>, which
    /// then holds the distilled model for the stages that follow. The student as held is not changed (a copy trains).
    /// Cancelling stops after the step being run; the output folder then holds the last checkpoint, which
    /// <see cref="DistillRequest.Resume"/> continues from, and no released model.
    /// </summary>
    public Task<TrainResult> DistillAsync(DistillRequest request, IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            if (!IsHeld(request.StudentPath, "torch") && !IsHeld(request.TeacherPath, "torch"))
                ModelFamilies.EstimateFolder(request.StudentPath).Distillation(ModelFamilies.EstimateFolder(request.TeacherPath), request.BatchSize)
                    .EnsureFits(request.StudentPath);
            var student = Load(request.StudentPath, "torch", "auto", progress);
            var teacher = Load(request.TeacherPath, "torch", "auto", progress);
            Forget(request.OutputPath); // a model held from an earlier run into the same folder is about to be replaced
            var result = DistillRunner.Run(request, student.Torch, teacher.Torch, p =>
            {
                var metrics = new Dictionary<string, double>
                {
                    ["loss"] = p.Loss,
                    ["images_per_second"] = p.ImagesPerSecond,
                    ["eta_seconds"] = p.Eta.TotalSeconds,
                    ["rss_bytes"] = p.ResidentBytes ?? double.NaN,
                };
                if (p.Terms is not null) foreach (var (name, value) in p.Terms) metrics[name + "_loss"] = value;
                string parts = p.Terms is null ? "" : " (" + string.Join(", ", p.Terms.Select(t => string.Create(CultureInfo.InvariantCulture, $"{t.Key} {t.Value:F4}"))) + ")";
                progress?.Report(StageProgress.Step(PipelineStage.Distill, p.Step, p.TotalSteps, string.Create(CultureInfo.InvariantCulture,
                    $"loss {p.Loss:F4}{parts} {p.ImagesPerSecond:F0} img/s eta {p.Eta:hh\\:mm\\:ss}"), metrics));
            }, message => progress?.Report(StageProgress.Note(PipelineStage.Distill, message)), cancel);
            var inference = InferenceModel.Load(request.OutputPath, "torch", Device);
            Hold(request.OutputPath, "torch", inference, null);
            progress?.Report(new StageProgress(PipelineStage.Distill, 1, string.Create(CultureInfo.InvariantCulture,
                $"distilled: {result.Steps} steps, final loss {result.FinalLoss:F4}, in {result.WallTime.TotalSeconds:F1} s")));
            return result;
        }, cancel);

    /// <summary>
    /// Evaluates the model at <see cref="EvalRequest.ModelPath"/> (and the reference, for paired SSIM/PSNR), held or
    /// loaded; sends the first batch of samples as a preview.
    /// </summary>
    public Task<EvalReport> EvaluateAsync(EvalRequest request, IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            EnsureFits(request.ModelPath, request.Backend, e => e.Inference(request.BatchSize));
            var model = Load(request.ModelPath, request.Backend, request.Provider, progress);
            var reference = request.ReferenceModelPath is null ? null : Load(request.ReferenceModelPath, request.Backend, request.Provider, progress);
            var report = ModelEvaluator.Evaluate(request, model.Inference, reference?.Inference,
                (done, total) => progress?.Report(StageProgress.Step(PipelineStage.Evaluate, done, total, $"sampled {done}/{total}")),
                cancel,
                firstBatch => progress?.Report(new StageProgress(PipelineStage.Evaluate, null, "first samples",
                    Preview: Preview(firstBatch, $"first {Math.Min(firstBatch.shape[0], 64)} samples, {request.Steps} steps, seed {request.Seed}"))));
            progress?.Report(new StageProgress(PipelineStage.Evaluate, 1, string.Create(CultureInfo.InvariantCulture,
                $"FID-proxy {report.Fid.Value:F3} [{report.Fid.Lower:F3}, {report.Fid.Upper:F3}], KID {report.Kid.Mean:F5}"),
                new Dictionary<string, double>
                {
                    ["fid_proxy"] = report.Fid.Value,
                    ["fid_lower"] = report.Fid.Lower,
                    ["fid_upper"] = report.Fid.Upper,
                    ["kid"] = report.Kid.Mean,
                    ["sampler_ms_per_image"] = report.SamplerMillisecondsPerImage,
                }));
            return report;
        }, cancel);

    /// <summary>
    /// Evaluates a Stable Diffusion pipeline folder (pruned, distilled) against a reference pipeline, usually the one it
    /// was pruned from (<see cref="StableDiffusionEvaluator"/>): each prompt's images from both from the same noise, paired
    /// SSIM, PSNR and latent MSE, LD-Pruner's latent statistic, and each pipeline's U-Net cost and time per step. Reports
    /// each prompt's images from each pipeline as a step, then the same-seed grid as a preview and the figures. Both
    /// pipelines are loaded whole for the request and not held; U-Nets held for those folders (a pruned or distilled
    /// student from an earlier stage) are dropped first, since the evaluator does not use them.
    /// </summary>
    public Task<StableDiffusionEvalReport> EvaluateStableDiffusionAsync(StableDiffusionEvalRequest request, IProgress<StageProgress>? progress = null,
        CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            Forget(request.ModelPath);
            Forget(request.ReferencePath);
            progress?.Report(StageProgress.Note(PipelineStage.Load, $"loading {request.ModelPath} and its reference {request.ReferencePath}"));
            var report = StableDiffusionEvaluator.Evaluate(request, Device,
                (done, total) => progress?.Report(StageProgress.Step(PipelineStage.Evaluate, done, total,
                    $"prompt {(done + 1) / 2} of {total / 2}, {(done % 2 == 1 ? "the reference" : "the model")} sampled")),
                cancel,
                grid => progress?.Report(new StageProgress(PipelineStage.Evaluate, null, "same-seed grid", Preview: grid)));
            progress?.Report(new StageProgress(PipelineStage.Evaluate, 1, string.Create(CultureInfo.InvariantCulture,
                $"SSIM {report.Ssim.Mean:F4}, PSNR {report.Psnr.Mean:F2} dB, latent MSE / var {report.LatentRelativeMse.Mean:F4} to the reference"),
                new Dictionary<string, double>
                {
                    ["ssim"] = report.Ssim.Mean,
                    ["psnr_db"] = report.Psnr.Mean,
                    ["latent_relative_mse"] = report.LatentRelativeMse.Mean,
                    ["latent_statistic_shift"] = report.LatentStatisticShift,
                    ["ms_per_step"] = report.ModelCost.MillisecondsPerStep,
                }));
            return report;
        }, cancel);

    /// <summary>
    /// Compares 2 to 6 models (held or loaded; the first is the reference) from the same noise: grids and their
    /// differences, quality and cost figures, latency in TorchSharp and ONNX Runtime, kept fraction per layer; writes the
    /// report and its figures to <see cref="CompareRequest.OutputPath"/> (see <see cref="ModelComparison"/>).
    /// </summary>
    public Task<ComparisonReport> CompareAsync(CompareRequest request, IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            request.Check();
            foreach (var path in request.ModelPaths)
                EnsureFits(path, "torch", e => e.Inference(Math.Max(Math.Min(request.Samples, 100), request.GridImages)));
            var report = ModelComparison.Run(request, path => Load(path, "torch", "auto", progress).Inference,
                (fraction, message) => progress?.Report(new StageProgress(PipelineStage.Compare, fraction, message)), cancel,
                bundle => Load(bundle, "onnx", request.Provider, progress).Inference);
            progress?.Report(new StageProgress(PipelineStage.Compare, 1, string.Create(CultureInfo.InvariantCulture,
                $"compared {report.Models.Count} models in {report.Seconds:F0} s")));
            return report;
        }, cancel);

    /// <summary>Writes the bundle of the model at <see cref="ExportRequest.ModelPath"/>, held or loaded.</summary>
    public Task<ExportResult> ExportAsync(ExportRequest request, IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            var model = Load(request.ModelPath, "torch", "auto", progress);
            var result = ModelExporter.Export(request, model.Torch, message => progress?.Report(StageProgress.Note(PipelineStage.Export, message)), cancel);
            progress?.Report(new StageProgress(PipelineStage.Export, 1, $"wrote {result.Files.Count} files to {result.OutputPath}"));
            return result;
        }, cancel);

    /// <summary>
    /// Exports a Stable Diffusion pipeline folder (also a pruned one) as an ONNX pipeline: text_encoder, unet and
    /// vae_decoder model.onnx, tokenizer, scheduler, model_index.json and a model card (<see cref="StableDiffusionOnnxExporter"/>).
    /// The pipeline is loaded for the request and not held; only the onnx format applies (the default when
    /// <paramref name="formats"/> is null).
    /// </summary>
    public Task<StableDiffusionOnnxExport> ExportStableDiffusionAsync(string modelPath, string outputPath, IReadOnlyList<ExportFormat>? formats = null,
        IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            StableDiffusionOnnxExporter.CheckFormats(modelPath, formats ?? [ExportFormat.Onnx]);
            var result = StableDiffusionOnnxExporter.Export(modelPath, outputPath, message => progress?.Report(StageProgress.Note(PipelineStage.Export, message)), cancel);
            progress?.Report(new StageProgress(PipelineStage.Export, 1, $"wrote {result.Files.Count} files to {result.OutputPath}"));
            return result;
        }, cancel);

    /// <summary>TorchSharp latency of the model at <paramref name="modelPath"/> (held or loaded), on the CPU.</summary>
    public Task<IReadOnlyList<LatencyResult>> TorchLatencyAsync(string modelPath, IReadOnlyList<int> batches, LatencyOptions? options = null,
        IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() =>
        {
            var model = Load(modelPath, "torch", "auto", progress);
            bool onCpu = Device.type == DeviceType.CPU;
            using var copy = onCpu ? null : ModelFamilies.Load(modelPath, device: CPU); // latency is timed on the CPU, beside ONNX Runtime's
            return TorchLatency.Measure(copy ?? model.Torch, batches, options,
                line => progress?.Report(StageProgress.Note(PipelineStage.Latency, line)));
        }, cancel);

    /// <summary>ONNX Runtime (CPU) latency of a bundle's model.onnx.</summary>
    public Task<IReadOnlyList<LatencyResult>> OnnxLatencyAsync(string onnxPath, IReadOnlyList<int> batches, LatencyOptions? options = null,
        IProgress<StageProgress>? progress = null, CancellationToken cancel = default) =>
        RunAsync(() => OnnxLatency.Measure(onnxPath, batches, options, line => progress?.Report(StageProgress.Note(PipelineStage.Latency, line))), cancel);

    /// <summary>Drops the models held for <paramref name="path"/> (every backend) and frees their memory.</summary>
    public void Forget(string path)
    {
        string full = FullPath(path);
        foreach (var key in _models.Keys.Where(k => k.EndsWith("|" + full, StringComparison.Ordinal)).ToList())
        {
            _models[key].Dispose();
            _models.Remove(key);
        }
        NativeMemory.Trim();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var model in _models.Values) model.Dispose();
        _models.Clear();
        _gate.Dispose();
        _worker.Dispose();
        NativeMemory.Trim();
    }

    private bool IsHeld(string path, string backend) => _models.ContainsKey(Key((backend ?? "").Trim().ToLowerInvariant(), path));

    /// <summary>
    /// Before a stage loads a diffusers folder: refuses, in one line and before any tensor exists, a workload whose
    /// estimate from the config alone exceeds the memory limit. A model already held is in memory and not checked again;
    /// ONNX bundles are left to ONNX Runtime.
    /// </summary>
    private void EnsureFits(string path, string backend, Func<ResourceEstimate, ResourceNeed> need)
    {
        if (!string.Equals((backend ?? "").Trim(), "torch", StringComparison.OrdinalIgnoreCase) || IsHeld(path, "torch")) return;
        need(ModelFamilies.EstimateFolder(path)).EnsureFits(path);
    }

    private LoadedModel Load(string path, string backend, string provider, IProgress<StageProgress>? progress)
    {
        string normalized = (backend ?? "").Trim().ToLowerInvariant();
        if (_models.TryGetValue(Key(normalized, path), out var held)) return held;
        var inference = InferenceModel.Load(path, normalized, Device, provider, line => progress?.Report(StageProgress.Note(PipelineStage.Load, line)));
        var loaded = Hold(path, normalized, inference, null);
        progress?.Report(new StageProgress(PipelineStage.Load, 1, $"loaded {loaded.ClassName} from {path}"));
        return loaded;
    }

    private LoadedModel Hold(string path, string backend, InferenceModel inference, PruneReport? prune)
    {
        string key = Key(backend, path);
        if (_models.Remove(key, out var replaced)) replaced.Dispose(); // a stage wrote over the folder: the new model replaces the old
        var loaded = new LoadedModel(path, backend, inference, prune);
        _models[key] = loaded;
        return loaded;
    }

    private static string Key(string backend, string path) => backend + "|" + FullPath(path);

    private static string FullPath(string path) => System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(path));

    private static PreviewImage? Preview(Tensor images, string caption)
    {
        if (images.dim() != 4 || images.shape[1] is not (1 or 3)) return null; // latents are not pictures
        using var shown = images.narrow(0, 0, Math.Min(images.shape[0], 64));
        var (png, width, height) = ImageGrid.Png(shown, scale: 2);
        return new PreviewImage(png, width, height, caption);
    }

    private async Task<T> RunAsync<T>(Func<T> stage, CancellationToken cancel)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            cancel.ThrowIfCancellationRequested();
            return await _worker.Run(stage).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
    }
}
