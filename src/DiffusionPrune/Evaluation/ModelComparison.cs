using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference;
using DiffusionPrune.Runtime;
using static TorchSharp.torch;

namespace DiffusionPrune.Evaluation;

/// <summary>
/// What to compare: 2 to 6 models, the first the reference (the original the others were pruned or distilled from).
/// Every model samples the same seeded grid and the same evaluation noise, so pictures and SSIM pair image for image.
/// </summary>
public sealed record CompareRequest
{
    public const int MinModels = 2, MaxModels = 6;

    /// <summary>Model folders; the first is the reference.</summary>
    public required IReadOnlyList<string> ModelPaths { get; init; }

    /// <summary>Names to show (default: the folders' names).</summary>
    public IReadOnlyList<string>? Names { get; init; }

    /// <summary>The folder the comparison is written to (comparison.json, .md, .png, grids, bundles).</summary>
    public required string OutputPath { get; init; }

    /// <summary>Images per model for the quality figures.</summary>
    public int Samples { get; init; } = 64;

    /// <summary>DDIM steps per image.</summary>
    public int Steps { get; init; } = 10;

    public long Seed { get; init; }

    /// <summary>Images in each side-by-side grid.</summary>
    public int GridImages { get; init; } = 16;

    /// <summary>The batch latency is timed at (TorchSharp and ONNX Runtime); null skips latency and the ONNX export.</summary>
    public int? LatencyBatch { get; init; } = 1;

    /// <summary>Warm-up and timed runs of each latency measurement.</summary>
    public LatencyOptions Latency { get; init; } = new() { WarmupRuns = 2, TimedRuns = 10 };

    /// <summary>Real images to measure against: null for MNIST, or a folder (see <see cref="EvalRequest.Data"/>).</summary>
    public string? Data { get; init; }

    /// <summary>
    /// What samples the grids and quality figures: torch (TorchSharp, the default) or onnx (each model's bundle, exported
    /// into the comparison folder, in ONNX Runtime with <see cref="Provider"/>). Latency is timed in both either way.
    /// </summary>
    public string Runtime { get; init; } = "torch";

    /// <summary>ONNX Runtime execution provider when <see cref="Runtime"/> is onnx: auto | cpu | directml | cuda.</summary>
    public string Provider { get; init; } = "auto";

    /// <summary>The shown name of model <paramref name="i"/>.</summary>
    public string NameOf(int i) => Names is { } names && i < names.Count && names[i].Length > 0
        ? names[i]
        : Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(ModelPaths[i])));

    /// <exception cref="ArgumentException">Fewer than 2 or more than 6 models, a model twice, or a setting out of range.</exception>
    public void Check()
    {
        if (ModelPaths.Count is < MinModels or > MaxModels)
            throw new ArgumentException($"Compare {MinModels} to {MaxModels} models (the first is the reference), not {ModelPaths.Count}.");
        var full = ModelPaths.Select(p => Path.TrimEndingDirectorySeparator(Path.GetFullPath(p))).ToList();
        if (full.Distinct(StringComparer.Ordinal).Count() != full.Count)
            throw new ArgumentException("A model is listed twice; compare different models.");
        if (Samples is < 2 or > 10_000) throw new ArgumentException($"Samples must be between 2 and 10,000, not {Samples}.");
        if (Steps is < 1 or > 1000) throw new ArgumentException($"Steps must be between 1 and 1,000, not {Steps}.");
        if (GridImages is < 1 or > 64) throw new ArgumentException($"Grid images must be between 1 and 64, not {GridImages}.");
        if (LatencyBatch is < 1 or > 256) throw new ArgumentException($"The latency batch must be between 1 and 256, not {LatencyBatch}.");
        if (Runtime is not ("torch" or "onnx")) throw new ArgumentException($"The runtime must be torch or onnx, not '{Runtime}'.");
    }
}

/// <summary>One model's figures in a comparison. Paths are relative to the comparison folder.</summary>
public sealed record ComparedModel(
    string Name, string ClassName, string Method, double? Target, double RemovedParams, long Parameters, long Macs,
    double Fid, double FidLower, double FidUpper, double Kid, double KidStd, double Precision, double Recall,
    double? ClassAccuracy, double? Ssim, double? Psnr, double SamplerMsPerImage,
    LatencyResult? Torch, LatencyResult? Onnx, IReadOnlyDictionary<string, double> KeptFractionPerLayer,
    string Grid, string? Difference, double? MeanAbsoluteDifference, string SampledWith = "torch (cpu)", int SampledBatch = 0, int SampledSteps = 0)
{
    /// <summary>
    /// The time of one sampling step for the batch the figures were sampled in (<see cref="SampledBatch"/>), from the
    /// median time per image; null for a report written before it was recorded.
    /// </summary>
    public double? MillisecondsPerStep => SampledBatch > 0 && SampledSteps > 0 ? SamplerMsPerImage * SampledBatch / SampledSteps : null;

    /// <summary>The reference has no difference image.</summary>
    public bool IsReference => Difference is null;

    public JsonObject ToJson()
    {
        var kept = new JsonObject();
        foreach (var (layer, fraction) in KeptFractionPerLayer) kept[layer] = Math.Round(fraction, 4);
        return new JsonObject
        {
            ["name"] = Name,
            ["class"] = ClassName,
            ["method"] = Method,
            ["target_removed_params"] = Target,
            ["removed_params"] = RemovedParams,
            ["parameters"] = Parameters,
            ["macs"] = Macs,
            ["fid_proxy"] = new JsonObject { ["value"] = Fid, ["lower"] = FidLower, ["upper"] = FidUpper, ["confidence"] = 0.95 },
            ["kid"] = new JsonObject { ["mean"] = Kid, ["std"] = KidStd },
            ["precision"] = Precision,
            ["recall"] = Recall,
            ["class_accuracy"] = ClassAccuracy,
            ["ssim_to_reference"] = Ssim,
            ["psnr_to_reference"] = Psnr,
            ["sampler_ms_per_image"] = SamplerMsPerImage,
            ["latency"] = new JsonObject { [LatencyResult.TorchSharp] = Torch?.ToJson(), [LatencyResult.OnnxRuntimeCpu] = Onnx?.ToJson() },
            ["kept_fraction_per_layer"] = kept,
            ["grid"] = Grid,
            ["difference"] = Difference,
            ["mean_absolute_difference"] = MeanAbsoluteDifference,
            ["sampled_with"] = SampledWith,
            ["sampled_batch"] = SampledBatch,
            ["sampled_steps"] = SampledSteps,
        };
    }

    private static double Figure(JsonNode? node) => node is JsonValue v && v.TryGetValue<double>(out var d) ? d : double.NaN;

    /// <exception cref="InvalidDataException">A field is missing.</exception>
    public static ComparedModel FromJson(JsonNode json)
    {
        JsonNode Need(JsonNode? parent, string key) => parent?[key] ?? throw new InvalidDataException($"A compared model has no \"{key}\".");
        double? Optional(string key) => json[key]?.GetValue<double>();
        var latency = json["latency"];
        return new ComparedModel(
            Need(json, "name").GetValue<string>(), Need(json, "class").GetValue<string>(), Need(json, "method").GetValue<string>(),
            Optional("target_removed_params"), Need(json, "removed_params").GetValue<double>(), Need(json, "parameters").GetValue<long>(),
            Need(json, "macs").GetValue<long>(),
            // a figure that was not finite is stored as null (ReportJson): it reads back as NaN, and the comparison still opens
            Figure(json["fid_proxy"]?["value"]), Figure(json["fid_proxy"]?["lower"]), Figure(json["fid_proxy"]?["upper"]),
            Figure(json["kid"]?["mean"]), Figure(json["kid"]?["std"]), Figure(json["precision"]), Figure(json["recall"]),
            Optional("class_accuracy"), Optional("ssim_to_reference"), Optional("psnr_to_reference"), Figure(json["sampler_ms_per_image"]),
            latency?[LatencyResult.TorchSharp] is { } torch ? LatencyResult.FromJson(torch) : null,
            latency?[LatencyResult.OnnxRuntimeCpu] is { } onnx ? LatencyResult.FromJson(onnx) : null,
            (json["kept_fraction_per_layer"] as JsonObject)?.ToDictionary(p => p.Key, p => p.Value!.GetValue<double>()) ?? [],
            Need(json, "grid").GetValue<string>(), json["difference"]?.GetValue<string>(), Optional("mean_absolute_difference"),
            json["sampled_with"]?.GetValue<string>() ?? "torch (cpu)", json["sampled_batch"]?.GetValue<int>() ?? 0, json["sampled_steps"]?.GetValue<int>() ?? 0);
    }
}

/// <summary>
/// A finished comparison: every model's quality and cost figures from the same noise, its grid and difference image,
/// and the machine that measured them. <see cref="Write"/> saves comparison.json and comparison.md; the figures
/// (comparison.png, pareto.png, kept-layers.png) are <see cref="ComparisonFigures"/>'.
/// </summary>
public sealed record ComparisonReport(
    IReadOnlyList<ComparedModel> Models, int Samples, int Steps, long Seed, int GridImages, int? LatencyBatch,
    string Reference, string FeatureSpace, string Machine, DateTimeOffset CreatedAt, double Seconds)
{
    public const string JsonName = "comparison.json", MarkdownName = "comparison.md", PngName = "comparison.png",
        ParetoName = "pareto.png", HeatMapName = "kept-layers.png";

    public JsonObject ToJson() => new()
    {
        ["models"] = new JsonArray(Models.Select(m => (JsonNode)m.ToJson()).ToArray()),
        ["samples"] = Samples,
        ["steps"] = Steps,
        ["seed"] = Seed,
        ["grid_images"] = GridImages,
        ["latency_batch"] = LatencyBatch,
        ["reference"] = Reference,
        ["feature_space"] = FeatureSpace,
        ["machine"] = Machine,
        ["created_at"] = CreatedAt.ToString("O", CultureInfo.InvariantCulture),
        ["seconds"] = Math.Round(Seconds, 2),
    };

    /// <summary>Reads <see cref="JsonName"/> from <paramref name="folder"/>.</summary>
    /// <exception cref="InvalidDataException">The file is not a comparison.</exception>
    public static ComparisonReport Load(string folder)
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, JsonName))) as JsonObject
            ?? throw new InvalidDataException($"{JsonName} is not a JSON object.");
        JsonNode Need(string key) => json[key] ?? throw new InvalidDataException($"{JsonName} has no \"{key}\".");
        return new ComparisonReport(
            Need("models").AsArray().Select(m => ComparedModel.FromJson(m ?? throw new InvalidDataException("A compared model is null."))).ToList(),
            Need("samples").GetValue<int>(), Need("steps").GetValue<int>(), Need("seed").GetValue<long>(), Need("grid_images").GetValue<int>(),
            json["latency_batch"]?.GetValue<int>(), Need("reference").GetValue<string>(), Need("feature_space").GetValue<string>(),
            Need("machine").GetValue<string>(), DateTimeOffset.Parse(Need("created_at").GetValue<string>(), CultureInfo.InvariantCulture),
            Need("seconds").GetValue<double>());
    }

    /// <summary>Writes comparison.json and comparison.md into <paramref name="folder"/>.</summary>
    public void Write(string folder)
    {
        ReportJson.Write(Path.Combine(folder, JsonName), ToJson());
        File.WriteAllText(Path.Combine(folder, MarkdownName), Markdown());
    }

    /// <summary>The comparison as a markdown page: settings and machine, one table of quality and cost, the figures.</summary>
    public string Markdown()
    {
        static string F(double? v, string format) => v is double d && double.IsFinite(d) ? d.ToString(format, CultureInfo.InvariantCulture) : "–";
        var reference = Models[0];
        var md = new System.Text.StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# Comparison: {string.Join(", ", Models.Select(m => m.Name))}");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture,
            $"{Samples} images per model, {Steps} DDIM steps, seed {Seed}; the same noise for every model. Reference: **{reference.Name}**. " +
            $"Quality is measured against the {Reference} in the {FeatureSpace} feature space; FID-proxy with its 95% bootstrap interval, KID ± its standard deviation over subsets. " +
            $"Measured on {Machine}, {CreatedAt:yyyy-MM-dd HH:mm} UTC, in {Seconds:F0} s.");
        md.AppendLine();
        string latency = LatencyBatch is int b ? $" (batch {b}, median)" : "";
        md.AppendLine(CultureInfo.InvariantCulture, $"| model | method | removed params | parameters | MACs | FID-proxy [95%] | KID | precision | recall | class accuracy | SSIM to {reference.Name} | PSNR dB | TorchSharp ms{latency} | ONNX Runtime ms{latency} |");
        md.AppendLine("|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var m in Models)
            md.AppendLine(CultureInfo.InvariantCulture,
                $"| {m.Name} | {m.Method}{(m.Target is double t ? $" {t:0.#%}" : "")} | {m.RemovedParams:P1} | {m.Parameters:N0} | {m.Macs:N0} | {F(m.Fid, "F2")} [{F(m.FidLower, "F2")}, {F(m.FidUpper, "F2")}] | " +
                $"{F(m.Kid, Math.Abs(m.Kid) >= 100 ? "F1" : "F4")} ± {F(m.KidStd, Math.Abs(m.Kid) >= 100 ? "F1" : "F4")} | {F(m.Precision, "F3")} | {F(m.Recall, "F3")} | {F(m.ClassAccuracy, "P1")} | {F(m.Ssim, "F3")} | {F(m.Psnr, "F1")} | " +
                $"{F(m.Torch?.MedianMs, "F2")} | {F(m.Onnx?.MedianMs, "F2")} |");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"![Same-seed grids and per-image differences]({PngName})");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"![Pareto: FID-proxy against latency and parameters]({ParetoName})");
        if (Models.Any(m => m.KeptFractionPerLayer.Count > 0))
        {
            md.AppendLine();
            md.AppendLine(CultureInfo.InvariantCulture, $"![Kept fraction per layer]({HeatMapName})");
        }
        md.AppendLine();
        md.AppendLine("Grids: " + string.Join(", ", Models.Select(m => $"[{m.Name}]({m.Grid})" + (m.Difference is { } d ? $" ([difference]({d}), mean |Δ| {F(m.MeanAbsoluteDifference, "F1")} grey levels)" : ""))));
        return md.ToString();
    }
}

/// <summary>
/// Runs a comparison (<see cref="CompareRequest"/>): for each model, the same-seed grid and its difference from the
/// reference's, the quality figures against real images with SSIM/PSNR to the reference from the same noise,
/// parameters and MACs, TorchSharp latency and, from a bundle exported into the comparison folder, ONNX Runtime latency,
/// and the kept fraction per layer its prune report records. Then the report and its figures are written.
/// </summary>
public static class ModelComparison
{
    /// <param name="load">The model at a folder, loaded or held (the pipeline's Load), in TorchSharp.</param>
    /// <param name="loadBundle">A bundle folder in ONNX Runtime with the request's provider, when <see cref="CompareRequest.Runtime"/> is onnx.</param>
    /// <param name="progress">Overall fraction and a line for people.</param>
    public static ComparisonReport Run(CompareRequest request, Func<string, InferenceModel> load, Action<double, string>? progress = null,
        CancellationToken cancel = default, Func<string, InferenceModel>? loadBundle = null)
    {
        request.Check();
        var watch = Stopwatch.StartNew();
        string output = Path.GetFullPath(request.OutputPath);
        Directory.CreateDirectory(output);
        int n = request.ModelPaths.Count;
        // every model loaded (the pipeline holds them) and of the reference's shape before anything is sampled
        var loaded = request.ModelPaths.Select(load).ToList();
        var reference = loaded[0];
        for (int i = 1; i < n; i++)
            if (loaded[i].InChannels != reference.InChannels || !loaded[i].SampleSize.SequenceEqual(reference.SampleSize))
                throw new ArgumentException($"{request.NameOf(i)} makes {loaded[i].InChannels} x {string.Join(" x ", loaded[i].SampleSize)} samples but the reference " +
                    $"{request.NameOf(0)} makes {reference.InChannels} x {string.Join(" x ", reference.SampleSize)}; compare models of one shape.");
        bool onnxSampling = request.Runtime == "onnx";
        if (onnxSampling && loadBundle is null) throw new ArgumentException("Sampling in ONNX Runtime needs a way to load a bundle.", nameof(loadBundle));
        Tensor? referenceGrid = null;
        InferenceModel? referenceSampler = null;
        var models = new List<ComparedModel>();
        try
        {
            for (int i = 0; i < n; i++)
            {
                cancel.ThrowIfCancellationRequested();
                string path = request.ModelPaths[i], name = request.NameOf(i);
                void Report(double within, string message) => progress?.Invoke((i + within) / n, $"{name}: {message}");
                var model = loaded[i];

                // The bundle (the ONNX model and its scheduler) is exported first when it samples or is timed.
                string bundle = Path.Combine(output, "bundles", $"{i}-{Sanitize(name)}");
                if (onnxSampling || (request.LatencyBatch is not null && model.TorchModel is not null))
                {
                    Report(0, "exporting the ONNX bundle");
                    ModelExporter.Export(new ExportRequest { ModelPath = path, OutputPath = bundle, Formats = [ExportFormat.Onnx] },
                        model.TorchModel ?? throw new ArgumentException($"{name} is not a TorchSharp model to export."), cancel: cancel);
                    cancel.ThrowIfCancellationRequested();
                }
                var sampler = onnxSampling ? loadBundle!(bundle) : model;
                if (i == 0) referenceSampler = sampler;

                Report(0.05, $"sampling the same-seed grid ({sampler.Runtime})");
                string grid = $"grid-{i}.png";
                var sampled = SampleRunner.Run(new SampleRequest
                {
                    ModelPath = path, Steps = request.Steps, Seed = request.Seed, Count = request.GridImages, OutputPath = Path.Combine(output, grid),
                }, sampler, cancel: cancel);
                string? difference = null;
                double? meanDifference = null;
                using (var final = sampled.Final)
                using (sampled.Trajectory)
                {
                    if (i == 0)
                    {
                        using var detached = final.detach();
                        referenceGrid = detached.clone();
                    }
                    else
                    {
                        using var scope = NewDisposeScope();
                        var delta = (final - referenceGrid!).abs(); // in [0, 2]: 1 is half the range
                        meanDifference = delta.mean().item<float>() * 127.5;
                        difference = $"difference-{i}.png";
                        // black where equal, white at a difference of half the range or more
                        ImageGrid.Save(Path.Combine(output, difference), (delta * 2).clamp(0, 1) * 2 - 1);
                    }
                }

                Report(0.2, $"evaluating {request.Samples} images ({sampler.Runtime})");
                int evalBatch = Math.Min(request.Samples, 100);
                var eval = ModelEvaluator.Evaluate(new EvalRequest
                {
                    ModelPath = path, Samples = request.Samples, Steps = request.Steps, Seed = request.Seed,
                    BatchSize = evalBatch, BootstrapResamples = 200, Data = request.Data,
                    ReferenceModelPath = i == 0 ? null : request.ModelPaths[0],
                }, sampler, i == 0 ? null : referenceSampler, (done, total) => Report(0.2 + 0.5 * done / total, $"sampled {done}/{total}"), cancel);

                LatencyResult? torch = null, onnx = null;
                if (request.LatencyBatch is int batch && model.TorchModel is { } torchModel)
                {
                    Report(0.7, $"timing TorchSharp at batch {batch}");
                    torch = TorchLatency.Measure(torchModel, [batch], request.Latency).Single();
                    cancel.ThrowIfCancellationRequested();
                    Report(0.85, $"timing ONNX Runtime at batch {batch}");
                    onnx = OnnxLatency.Measure(Path.Combine(bundle, ModelFolder.OnnxModel), [batch], request.Latency).Single();
                }

                var (method, target, kept) = PruneFacts(path, i == 0);
                models.Add(new ComparedModel(
                    name, eval.ClassName, method, target, models.Count == 0 ? 0 : 1 - (double)eval.Parameters / models[0].Parameters,
                    eval.Parameters, eval.Macs, eval.Fid.Value, eval.Fid.Lower, eval.Fid.Upper, eval.Kid.Mean, eval.Kid.Std,
                    eval.PrecisionRecall.Precision, eval.PrecisionRecall.Recall, eval.ClassAccuracy, eval.Ssim, eval.Psnr, eval.SamplerMillisecondsPerImage,
                    torch, onnx, kept, grid, difference, meanDifference, sampler.Runtime, evalBatch, request.Steps));
                NativeMemory.Trim();
            }
        }
        finally
        {
            referenceGrid?.Dispose();
        }

        var cpu = CpuInfo.Read();
        var report = new ComparisonReport(models, request.Samples, request.Steps, request.Seed, request.GridImages, request.LatencyBatch,
            request.Data is null ? ModelEvaluator.MnistReference : "user's images", ModelEvaluator.FeatureSpace,
            $"{cpu.Model} ({string.Join(' ', cpu.VectorFlags)}), {Environment.ProcessorCount} logical processors", DateTimeOffset.UtcNow, watch.Elapsed.TotalSeconds);
        progress?.Invoke(1, "drawing the figures");
        ComparisonFigures.Write(report, output);
        report.Write(output);
        return report;
    }

    /// <summary>The method, target and kept fraction per layer a model's prune_report.json records ("original" for the reference).</summary>
    private static (string Method, double? Target, IReadOnlyDictionary<string, double> Kept) PruneFacts(string folder, bool isReference)
    {
        string file = Path.Combine(folder, ModelFolder.PruneReport);
        if (isReference || !File.Exists(file)) return (isReference ? Batch.BatchItem.OriginalName : "model", null, new Dictionary<string, double>());
        var json = JsonNode.Parse(File.ReadAllText(file));
        var kept = (json?["kept_fraction_per_layer"] as JsonObject)?.Where(p => p.Value is JsonValue).ToDictionary(p => p.Key, p => p.Value!.GetValue<double>())
            ?? [];
        return (json?["method"]?.GetValue<string>() ?? "model", json?["target_removed_params"]?.GetValue<double>(), kept);
    }

    private static string Sanitize(string name) => new(name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '-').ToArray());
}
