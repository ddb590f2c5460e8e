using DiffusionPrune.OnnxGraphs;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using Onnx;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;
using static DiffusionPrune.Export.ModelCardText;

namespace DiffusionPrune.Export;

/// <summary>What a bundle holds besides the model card and scheduler config.</summary>
public enum ExportFormat
{
    /// <summary>diffusers layout at the bundle root: config.json (with dprune_structure) + diffusion_pytorch_model.safetensors.</summary>
    Safetensors,

    /// <summary>model.onnx (see <see cref="OnnxContract"/>) + onnx_model.json describing its interface.</summary>
    Onnx,
}

/// <summary>One export: a model folder in, a bundle folder out.</summary>
public sealed record ExportRequest
{
    public required string ModelPath { get; init; }
    public required string OutputPath { get; init; }

    /// <summary>At least one format; see <see cref="ModelExporter.ParseFormats"/>.</summary>
    public required IReadOnlyList<ExportFormat> Formats { get; init; }

    /// <summary>The date written in the model card (default: now, UTC).</summary>
    public DateTimeOffset? ExportedAt { get; init; }

    /// <summary>scheduler_config.json to ship (default: the model's own, else the project's default DDPM schedule).</summary>
    public string? SchedulerConfigPath { get; init; }
}

/// <summary>What was written, with the cost figures the card and onnx_model.json state.</summary>
public sealed record ExportResult(string OutputPath, IReadOnlyList<string> Files, string ClassName, long Parameters, long Macs, string SchedulerSource);

/// <summary>
/// Writes a deployable bundle from a model folder: the diffusers files (safetensors format), model.onnx with
/// onnx_model.json (onnx format), scheduler_config.json (the model's own, else the project's default DDPM schedule)
/// and a README.md model card with class, parameters, MACs, source, date and any pruning/evaluation metrics found
/// beside the source model (prune_report.json, eval reports). Everything that can fail (bad formats, unreadable
/// model, an ONNX over 2 GB) fails before the first file is written. Used by <c>dprune export</c> and batch runners.
/// </summary>
public static class ModelExporter
{

    /// <summary>Parses a comma list such as "safetensors,onnx" (case-insensitive, duplicates ignored, order kept).</summary>
    public static IReadOnlyList<ExportFormat> ParseFormats(string? list)
    {
        var formats = new List<ExportFormat>();
        foreach (var item in (list ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            ExportFormat format = item.ToLowerInvariant() switch
            {
                "safetensors" => ExportFormat.Safetensors,
                "onnx" => ExportFormat.Onnx,
                _ => throw new ArgumentException($"--format '{item}' is not a known format; use a comma list of safetensors and onnx, e.g. --format safetensors,onnx."),
            };
            if (!formats.Contains(format)) formats.Add(format);
        }
        if (formats.Count == 0)
            throw new ArgumentException("--format needs at least one format: safetensors, onnx or safetensors,onnx.");
        return formats;
    }

    /// <summary>Loads the model from <see cref="ExportRequest.ModelPath"/> and writes its bundle.</summary>
    public static ExportResult Export(ExportRequest request, Action<string>? log = null, CancellationToken cancel = default)
    {
        string source = CheckRequest(request);
        using var model = ModelFamilies.Load(source, device: CPU);
        log?.Invoke($"loaded {model.ClassName} from {source}");
        return Export(request, model, log, cancel);
    }

    /// <summary>
    /// Writes the bundle of a model already in memory (a pipeline's hand-off). <see cref="ExportRequest.ModelPath"/> is
    /// the folder it came from or was saved to: the card names it, and its scheduler config and reports go into the
    /// bundle. The bundle is written beside its target and renamed into place when whole.
    /// </summary>
    public static ExportResult Export(ExportRequest request, DiffusionModel model, Action<string>? log = null, CancellationToken cancel = default)
    {
        string source = CheckRequest(request);
        string output = Path.GetFullPath(request.OutputPath);

        // 1. everything that can fail, before writing anything
        var cost = ModelCost.Measure(model);
        ModelProto? onnx = null;
        if (request.Formats.Contains(ExportFormat.Onnx))
        {
            onnx = OnnxExporter.Export(model);
            log?.Invoke($"built the ONNX graph: {onnx.Graph.Node.Count} nodes, opset {OnnxGraph.Opset}");
        }
        cancel.ThrowIfCancellationRequested();
        if (request.SchedulerConfigPath is not null && !File.Exists(request.SchedulerConfigPath))
            throw new FileNotFoundException($"No scheduler config at '{request.SchedulerConfigPath}'.", request.SchedulerConfigPath);
        string? schedulerPath = request.SchedulerConfigPath ?? DiffusersModelLoader.FindSchedulerConfig(source);
        var reports = FindReports(source);

        // 2. the bundle, written whole beside its target and then renamed into place
        var files = new List<string>();
        string schedulerSource = schedulerPath is not null ? SourceIdentity.DescribeFile(schedulerPath) : "the project's default DDPM schedule (ModelFolder.DefaultSchedulerJson: no x0 clipping for class-conditional models)";
        AtomicFolder.Write(output, "the bundle", IsBundle, folder =>
        {
            if (request.Formats.Contains(ExportFormat.Safetensors))
            {
                DiffusersModelLoader.Save(model, folder, new Dictionary<string, string> { ["dprune_exported_from"] = SourceIdentity.Describe(source) });
                files.Add(ModelFolder.Config);
                files.Add(ModelFolder.Weights);
            }
            string schedulerTarget = Path.Combine(folder, ModelFolder.SchedulerConfig);
            if (schedulerPath is not null)
                File.Copy(schedulerPath, schedulerTarget, overwrite: true);
            else
                File.WriteAllText(schedulerTarget, ModelFolder.DefaultSchedulerJson(classConditional: model.NumClasses is not null));
            files.Add(ModelFolder.SchedulerConfig);
            cancel.ThrowIfCancellationRequested();
            if (onnx is not null)
            {
                OnnxModelWriter.Write(onnx, Path.Combine(folder, OnnxContract.FileName));
                File.WriteAllText(Path.Combine(folder, ModelFolder.OnnxInfo), OnnxMetadata(model, onnx, cost).ToJsonString());
                files.Add(OnnxContract.FileName);
                files.Add(ModelFolder.OnnxInfo);
            }
            var card = ModelCard(model, cost, source, request.ExportedAt ?? DateTimeOffset.UtcNow, request.Formats, schedulerSource, onnx, reports);
            File.WriteAllText(Path.Combine(folder, ModelFolder.ModelCard), card);
            files.Add(ModelFolder.ModelCard);
        }, cancel);
        log?.Invoke($"wrote {string.Join(", ", files)} to {output}");
        return new ExportResult(output, files, model.ClassName, cost.Parameters, cost.Macs, schedulerSource);
    }

    /// <summary>An existing folder that an export may replace: an earlier bundle (it holds one of a bundle's files).</summary>
    private static bool IsBundle(string folder) =>
        new[] { ModelFolder.ModelCard, ModelFolder.OnnxInfo, OnnxContract.FileName, ModelFolder.Config, ModelFolder.SchedulerConfig }
            .Any(name => File.Exists(Path.Combine(folder, name)));

    /// <summary>The request's own checks; returns the source model folder.</summary>
    private static string CheckRequest(ExportRequest request)
    {
        if (request.Formats.Count == 0)
            throw new ArgumentException("Give at least one export format (safetensors, onnx).");
        string source = DiffusersModelLoader.ResolveModelFolder(request.ModelPath);
        string output = Path.GetFullPath(request.OutputPath);
        if (string.Equals(Path.GetFullPath(source).TrimEnd(Path.DirectorySeparatorChar), output.TrimEnd(Path.DirectorySeparatorChar), StringComparison.Ordinal))
            throw new ArgumentException($"--output '{request.OutputPath}' is the source model folder; give a new folder for the bundle.");
        if (File.Exists(output))
            throw new ArgumentException($"--output '{request.OutputPath}' is a file; give a folder for the bundle.");
        return source;
    }

    /// <summary>
    /// onnx_model.json (format and key names: <see cref="OnnxModelInfo"/>, which the runtimes parse back): the graph's
    /// interface, read from the graph itself, and what a sampler needs to drive it.
    /// </summary>
    public static OnnxModelInfo OnnxMetadata(DiffusionModel model, ModelProto onnx, ModelCostReport cost)
    {
        static OnnxTensorInfo Describe(ValueInfoProto v) => new(
            v.Name,
            (DataType)v.Type.TensorType.ElemType switch
            {
                DataType.Float => OnnxTensorInfo.Float32,
                DataType.Int64 => OnnxTensorInfo.Int64,
                var other => other.ToString().ToLowerInvariant(),
            },
            v.Type.TensorType.Shape.Dim
                .Select(d => d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimParam ? OnnxDimension.Dynamic(d.DimParam) : OnnxDimension.Fixed(d.DimValue))
                .ToArray());
        return new OnnxModelInfo
        {
            File = OnnxContract.FileName,
            Opset = (int)onnx.OpsetImport.Single(o => o.Domain == "").Version,
            IrVersion = onnx.IrVersion,
            ClassName = model.ClassName,
            Inputs = onnx.Graph.Input.Select(Describe).ToArray(),
            Outputs = onnx.Graph.Output.Select(Describe).ToArray(),
            SampleSize = model.SampleSize.ToArray(),
            InChannels = model.InChannels,
            OutChannels = model.OutChannels,
            LearnedSigma = model.LearnedSigma,
            NumClasses = model.NumClasses,
            NullClass = model.NullClass,
            Parameters = cost.Parameters,
            Macs = cost.Macs,
            Pruned = !model.Structure.IsEmpty,
        };
    }

    /// <summary>The pruning report and evaluation reports (any JSON with a fid_proxy entry) beside the source model.</summary>
    private static (JsonObject? prune, List<(string name, JsonObject report)> evals, JsonObject? distillation) FindReports(string folder)
    {
        JsonObject? prune = null, distillation = null;
        var evals = new List<(string, JsonObject)>();
        foreach (var file in Directory.EnumerateFiles(folder, "*.json").Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(file);
            if (name is ModelFolder.Config or ModelFolder.SchedulerConfig or ModelFolder.PrunePlan) continue;
            JsonObject? json;
            try
            {
                json = JsonNode.Parse(File.ReadAllText(file)) as JsonObject;
            }
            catch (JsonException)
            {
                continue; // not a report of ours; the card simply leaves it out
            }
            if (json is null) continue;
            if (name == ModelFolder.PruneReport) prune = json;
            else if (name == ModelFolder.TrainingArgs) distillation = json["distillation"] as JsonObject;
            else if (json["fid_proxy"] is JsonObject) evals.Add((name, json));
        }
        return (prune, evals, distillation);
    }

    private static string ModelCard(DiffusionModel model, ModelCostReport cost, string source, DateTimeOffset exportedAt, IReadOnlyList<ExportFormat> formats,
        string schedulerSource, ModelProto? onnx, (JsonObject? prune, List<(string name, JsonObject report)> evals, JsonObject? distillation) reports)
    {
        var inv = CultureInfo.InvariantCulture;
        var s = model.Structure;
        var card = new StringBuilder();
        card.AppendLine(inv, $"# {model.ClassName} — exported bundle");
        card.AppendLine();
        card.AppendLine(inv, $"Exported by `dprune export` on {exportedAt.UtcDateTime:yyyy-MM-dd} (UTC) from `{SourceIdentity.Describe(source)}`.");
        card.AppendLine();
        card.AppendLine("| | |");
        card.AppendLine("|---|---|");
        card.AppendLine(inv, $"| class | {model.ClassName} |");
        card.AppendLine(inv, $"| sample | {model.InChannels} x {model.SampleSize[0]} x {model.SampleSize[1]} |");
        card.AppendLine(inv, $"| output | {model.OutChannels} channel{(model.OutChannels == 1 ? "" : "s")}{(model.LearnedSigma ? " (learned sigma: the first " + model.InChannels + " are the prediction)" : "")} |");
        card.AppendLine(inv, $"| conditioning | {(model.NumClasses is int n ? $"{n} classes" + (model.NullClass is int nc ? $" + null class {nc}" : "") : "unconditional")} |");
        card.AppendLine(inv, $"| parameters | {cost.Parameters:N0} |");
        card.AppendLine(inv, $"| MACs per sample | {cost.Macs:N0} |");
        card.AppendLine(inv, $"| pruned | {ModelCardText.Pruned(s)} |");
        card.AppendLine();
        card.AppendLine("## Files");
        card.AppendLine();
        if (formats.Contains(ExportFormat.Safetensors))
            card.AppendLine("- `config.json` + `diffusion_pytorch_model.safetensors`: diffusers layout. " +
                (s.IsEmpty ? "Loads with diffusers' `from_pretrained` or DiffusionPrune's `DiffusersModelLoader.Load`."
                    : "The pruned widths are in config.json's `dprune_structure`, which DiffusionPrune's `DiffusersModelLoader.Load` reads (stock diffusers does not)."));
        if (onnx is not null)
        {
            var inputs = onnx.Graph.Input.Select(i => $"`{i.Name}`");
            string sigma = model.LearnedSigma ? " (all output channels; split off the learned sigma)." : ".";
            card.AppendLine(inv, $"- `{OnnxContract.FileName}`: the denoiser forward pass, ONNX opset {OnnxGraph.Opset}, float32; inputs {string.Join(", ", inputs)} " +
                $"(batch is dynamic), output `{OnnxContract.Output}`{sigma} `{ModelFolder.OnnxInfo}` describes the interface.");
        }
        card.AppendLine(inv, $"- `{ModelFolder.SchedulerConfig}`: from {schedulerSource}.");

        if (reports.prune is { } prune)
            ModelCardText.AppendPruning(card, prune, "parameters", "beside the source model");
        if (reports.distillation is { } d)
        {
            card.AppendLine();
            card.AppendLine("## Distillation");
            card.AppendLine();
            card.AppendLine("| KD | teacher | weights task / output / feature | images seen | of the teacher's training images |");
            card.AppendLine("|---|---|---|---|---|");
            card.AppendLine(inv, $"| {Text(d["kd"])} | {Text(d["teacher"])} | {Number(d["task_weight"], "G3")} / {Number(d["output_weight"], "G3")} / {Number(d["feature_weight"], "G3")} | " +
                $"{Count(d["images_seen"])} | {Percent(d["fraction_of_teacher_images"])} |");
            card.AppendLine();
            card.AppendLine(inv, $"Recovered by `dprune distill` after pruning; the recipe is in `{ModelFolder.TrainingArgs}` beside the source model.");
        }
        if (reports.evals.Count > 0)
        {
            card.AppendLine();
            card.AppendLine("## Quality");
            card.AppendLine();
            card.AppendLine("| report | samples x steps | scheduler | FID-proxy [95%] | KID | precision / recall | class accuracy | SSIM / PSNR to reference |");
            card.AppendLine("|---|---|---|---|---|---|---|---|");
            foreach (var (name, e) in reports.evals)
            {
                var fid = e["fid_proxy"]!;
                var kid = e["kid"];
                card.AppendLine(inv, $"| `{name}` | {Text(e["samples"])} x {Text(e["steps"])} | {Text(e["scheduler"])} | " +
                    $"{Number(fid["value"], "F3")} [{Number(fid["lower"], "F3")}, {Number(fid["upper"], "F3")}] | " +
                    $"{Number(kid?["mean"], "F5")} ± {Number(kid?["std"], "F5")} | {Number(e["precision"], "F3")} / {Number(e["recall"], "F3")} | " +
                    $"{Percent(e["class_accuracy"])} | {Number(e["ssim_to_reference"], "F4")} / {Number(e["psnr_to_reference"], "F2")} |");
            }
            card.AppendLine();
            card.AppendLine("Copied from the evaluation reports (`dprune eval --output`) beside the source model; FID-proxy uses the project's feature network.");
        }
        return card.ToString();
    }
}
