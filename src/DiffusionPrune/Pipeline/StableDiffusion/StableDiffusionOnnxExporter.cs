using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.OnnxGraphs;
using DiffusionPrune.Runtime;
using Onnx;
using static TorchSharp.torch;

namespace DiffusionPrune.Pipeline.StableDiffusion;

/// <summary>One graph of an exported ONNX pipeline: its folder, parameter count and the number of ONNX nodes.</summary>
public sealed record StableDiffusionOnnxComponent(string Folder, long Parameters, int Nodes);

/// <summary>What <see cref="StableDiffusionOnnxExporter.Export"/> wrote: files relative to the output folder, and the figures its model card states.</summary>
public sealed record StableDiffusionOnnxExport(string OutputPath, IReadOnlyList<string> Files, IReadOnlyList<StableDiffusionOnnxComponent> Components,
    long UNetParameters, long UNetMacs, bool Pruned);

/// <summary>
/// Writes a Stable Diffusion pipeline folder in the layout of diffusers' <c>OnnxStableDiffusionPipeline</c> (what
/// diffusers' convert_stable_diffusion_checkpoint_to_onnx.py writes), so ONNX Runtime, diffusers' ONNX pipeline and
/// Optimum's ORTStableDiffusionPipeline open it:
/// <list type="bullet">
/// <item><c>text_encoder/model.onnx</c>: input_ids int32 [batch, sequence] -> last_hidden_state (<see cref="CLIPTextOnnx"/>);</item>
/// <item><c>unet/model.onnx</c>: sample, timestep (float32), encoder_hidden_states -> out_sample (<see cref="UNet2DConditionOnnx"/>);</item>
/// <item><c>vae_decoder/model.onnx</c>: latent_sample -> sample, post_quant_conv included (<see cref="AutoencoderKLOnnx"/>);</item>
/// <item><c>tokenizer/</c> and <c>scheduler/</c> copied as they are, a <c>model_index.json</c> naming
/// OnnxRuntimeModel for the three graphs (vae_encoder, safety_checker and feature_extractor left out as [null, null]),
/// and a README.md model card (components, parameters, the U-Net's MACs, any pruning figures of the source).</item>
/// </list>
/// Each graph folder also gets the source component's <c>config.json</c>: diffusers ignores it, but it is where the VAE's
/// scaling_factor and the U-Net's sample_size live, which <see cref="OnnxStableDiffusionPipeline"/> reads (diffusers' ONNX
/// pipeline hard-codes SD 1.x's 0.18215 instead). A pruned pipeline exports at its pruned size.
/// All three graphs are built before the first file is written; the folder is written beside its target and renamed into place.
/// It lives in the Pipeline room (not Export) because it reads whole pipeline folders (<see cref="StableDiffusionPipeline"/>).
/// </summary>
public static class StableDiffusionOnnxExporter
{
    // the layout's names live in the TorchSharp-free contract (Inference/Onnx/OnnxStableDiffusionSession.cs), which samples/OnDeviceDemo compiles
    public const string PipelineClassName = OnnxPipelineLayout.ClassName;
    public const string TextEncoderFolder = OnnxPipelineLayout.TextEncoderFolder, UNetFolder = OnnxPipelineLayout.UNetFolder,
        VaeDecoderFolder = OnnxPipelineLayout.VaeDecoderFolder, TokenizerFolder = OnnxPipelineLayout.TokenizerFolder, SchedulerFolder = OnnxPipelineLayout.SchedulerFolder;

    /// <summary>The formats a pipeline exports in: onnx only (the default); safetensors is refused, the source already is that layout.</summary>
    public static void CheckFormats(string modelPath, IReadOnlyList<ExportFormat> formats)
    {
        if (formats.Contains(ExportFormat.Safetensors))
            throw new ArgumentException($"'{modelPath}' is a Stable Diffusion pipeline, already in diffusers' safetensors layout; it exports as an " +
                "ONNX pipeline only: use --format onnx (or leave --format out).");
    }

    /// <param name="pipelinePath">A diffusers StableDiffusionPipeline folder (also one <c>dprune prune</c> wrote).</param>
    /// <param name="outputPath">The ONNX pipeline folder; an earlier ONNX pipeline there is replaced, any other non-empty folder is refused.</param>
    /// <param name="exportedAt">The date in the model card (default: now, UTC).</param>
    public static StableDiffusionOnnxExport Export(string pipelinePath, string outputPath, Action<string>? log = null, CancellationToken cancel = default,
        DateTimeOffset? exportedAt = null)
    {
        string output = Path.GetFullPath(outputPath);
        if (File.Exists(output))
            throw new ArgumentException($"--output '{outputPath}' is a file; give a folder for the ONNX pipeline.");
        string? sourceIndex = PipelineIndex.Find(pipelinePath);
        if (sourceIndex is not null && SameFolder(Path.GetDirectoryName(sourceIndex)!, output))
            throw new ArgumentException($"--output '{outputPath}' is the source pipeline folder; give a new folder for the ONNX pipeline.");
        if (sourceIndex is not null && IsOnnxPipeline(Path.GetDirectoryName(sourceIndex)!))
            throw new ArgumentException($"'{pipelinePath}' is already an exported ONNX pipeline; export the diffusers pipeline it came from, " +
                $"or sample this one with: dprune sample --model {pipelinePath} --backend onnx --prompt \"...\".");
        AtomicFolder.Check(output, "the ONNX pipeline", IsOnnxPipeline);
        using var pipeline = StableDiffusionPipeline.Load(pipelinePath, device: CPU);
        string source = pipeline.Folder;
        log?.Invoke($"loaded the Stable Diffusion pipeline from {source}");

        // 1. every graph, the figures and the index, before anything is written
        var graphs = new List<(string Folder, ModelProto Model, long Parameters, string SourceConfig)>
        {
            (TextEncoderFolder, OnnxExporter.ExportTextEncoder(pipeline.TextEncoder), Count(pipeline.TextEncoder.named_parameters()),
                Path.Combine(source, "text_encoder", ModelFolder.Config)),
            (UNetFolder, OnnxExporter.Export(pipeline.Unet), pipeline.Unet.ParameterCount(), Path.Combine(source, "unet", ModelFolder.Config)),
            (VaeDecoderFolder, OnnxExporter.ExportVaeDecoder(pipeline.Vae),
                Count(pipeline.Vae.named_parameters().Where(p => p.name.StartsWith("decoder.", StringComparison.Ordinal) || p.name.StartsWith("post_quant_conv.", StringComparison.Ordinal))),
                Path.Combine(source, "vae", ModelFolder.Config)),
        };
        foreach (var (folder, model, _, _) in graphs)
        {
            log?.Invoke($"built {folder}/{ModelFolder.OnnxModel}: {model.Graph.Node.Count} nodes, opset {OnnxGraph.Opset}");
            cancel.ThrowIfCancellationRequested();
        }
        var unetCost = ModelCost.Measure(pipeline.Unet);
        var components = graphs.Select(g => new StableDiffusionOnnxComponent(g.Folder, g.Parameters, g.Model.Graph.Node.Count)).ToList();
        var sourceIndexJson = PipelineIndex.Load(source);
        var index = ModelIndex(sourceIndexJson);
        JsonObject? pruneReport = ReadReport(Path.Combine(source, ModelFolder.PruneReport));
        bool pruned = !pipeline.Unet.Structure.IsEmpty;
        string card = ModelCard(pipeline, source, exportedAt ?? DateTimeOffset.UtcNow, components, unetCost, pruneReport);
        foreach (var name in new[] { TokenizerFolder, SchedulerFolder })
            if (!Directory.Exists(Path.Combine(source, name)))
                throw new ModelFormatException($"'{source}' has no {name}/ folder; an ONNX pipeline ships the source's {name} as it is.");

        // 2. the folder, written whole beside its target and then renamed into place
        var files = new List<string>();
        AtomicFolder.Write(output, "the ONNX pipeline", IsOnnxPipeline, folder =>
        {
            foreach (var (name, model, _, sourceConfig) in graphs)
            {
                OnnxModelWriter.Write(model, Path.Combine(folder, name, ModelFolder.OnnxModel));
                files.Add($"{name}/{ModelFolder.OnnxModel}");
                // the unet's config as the pipeline holds it, dprune_structure included for a pruned one
                string configTarget = Path.Combine(folder, name, ModelFolder.Config);
                if (name == UNetFolder)
                    File.WriteAllText(configTarget, pipeline.Unet.ConfigToJson().ToJsonString(Indented));
                else
                    File.Copy(sourceConfig, configTarget);
                files.Add($"{name}/{ModelFolder.Config}");
                cancel.ThrowIfCancellationRequested();
            }
            foreach (var name in new[] { TokenizerFolder, SchedulerFolder })
            {
                Directory.CreateDirectory(Path.Combine(folder, name));
                foreach (var file in Directory.GetFiles(Path.Combine(source, name)).Order(StringComparer.Ordinal))
                {
                    File.Copy(file, Path.Combine(folder, name, Path.GetFileName(file)));
                    files.Add($"{name}/{Path.GetFileName(file)}");
                }
            }
            File.WriteAllText(Path.Combine(folder, ModelFolder.PipelineIndex), index.ToJsonString(Indented));
            files.Add(ModelFolder.PipelineIndex);
            File.WriteAllText(Path.Combine(folder, ModelFolder.ModelCard), card);
            files.Add(ModelFolder.ModelCard);
        }, cancel);
        return new StableDiffusionOnnxExport(output, files, components, unetCost.Parameters, unetCost.Macs, pruned);
    }

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private static long Count(IEnumerable<(string name, TorchSharp.Modules.Parameter parameter)> parameters) => parameters.Sum(p => p.parameter.numel());

    private static bool SameFolder(string a, string b) =>
        string.Equals(Path.GetFullPath(a).TrimEnd(Path.DirectorySeparatorChar), Path.GetFullPath(b).TrimEnd(Path.DirectorySeparatorChar), StringComparison.Ordinal);

    /// <summary>diffusers' OnnxStableDiffusionPipeline model_index.json: the source's scheduler and tokenizer entries, OnnxRuntimeModel for the graphs.</summary>
    private static JsonObject ModelIndex(PipelineIndex source)
    {
        static JsonArray Entry(string? library, string? className) => new(library is null ? null : JsonValue.Create(library), className is null ? null : JsonValue.Create(className));
        var scheduler = source.Present("scheduler")!;
        var tokenizer = source.Present("tokenizer")!;
        return new JsonObject
        {
            ["_class_name"] = PipelineClassName,
            ["_diffusers_version"] = "0.31.0",
            ["_dprune_exported_from"] = SourceIdentity.Describe(source.Folder),
            ["feature_extractor"] = Entry(null, null),
            ["requires_safety_checker"] = false,
            ["safety_checker"] = Entry(null, null),
            ["scheduler"] = Entry(scheduler.Library, scheduler.ClassName),
            ["text_encoder"] = Entry("diffusers", "OnnxRuntimeModel"),
            ["tokenizer"] = Entry(tokenizer.Library, tokenizer.ClassName),
            ["unet"] = Entry("diffusers", "OnnxRuntimeModel"),
            ["vae_decoder"] = Entry("diffusers", "OnnxRuntimeModel"),
            ["vae_encoder"] = Entry(null, null),
        };
    }

    /// <summary>prune_report.json at the source pipeline's root (what <c>dprune prune</c> writes there), or null.</summary>
    private static JsonObject? ReadReport(string file)
    {
        if (!File.Exists(file)) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllText(file)) as JsonObject;
        }
        catch (JsonException)
        {
            return null; // not a report of ours; the card leaves it out
        }
    }

    private static string ModelCard(StableDiffusionPipeline pipeline, string source, DateTimeOffset exportedAt, IReadOnlyList<StableDiffusionOnnxComponent> components,
        ModelCostReport unetCost, JsonObject? prune)
    {
        var inv = CultureInfo.InvariantCulture;
        var s = pipeline.Unet.Structure;
        var (height, width) = pipeline.DefaultImageSize;
        var card = new StringBuilder();
        card.AppendLine(inv, $"# {PipelineClassName} — exported Stable Diffusion pipeline");
        card.AppendLine();
        card.AppendLine(inv, $"Exported by `dprune export` on {exportedAt.UtcDateTime:yyyy-MM-dd} (UTC) from `{SourceIdentity.Describe(source)}`, " +
            $"in the layout of diffusers' `{PipelineClassName}` (ONNX opset {OnnxGraph.Opset}, float32).");
        card.AppendLine();
        card.AppendLine("| | |");
        card.AppendLine("|---|---|");
        card.AppendLine(inv, $"| image | {pipeline.Vae.Config.OutChannels} x {height} x {width} (latents {pipeline.Unet.InChannels} x {unetCost.SampleSize[0]} x {unetCost.SampleSize[^1]}, VAE scaling factor {pipeline.Vae.ScalingFactor.ToString("G6", inv)}) |");
        card.AppendLine(inv, $"| text | CLIP, {pipeline.Tokenizer.ModelMaxLength} tokens, width {pipeline.TextEncoder.Config.HiddenSize} |");
        card.AppendLine(inv, $"| scheduler | {PipelineIndex.Load(source).Present("scheduler")!.ClassName} |");
        foreach (var c in components)
            card.AppendLine(inv, $"| {c.Folder} parameters | {c.Parameters:N0} ({c.Nodes:N0} ONNX nodes) |");
        card.AppendLine(inv, $"| U-Net MACs per sample | {unetCost.Macs:N0} |");
        card.AppendLine(inv, $"| U-Net pruned | {ModelCardText.Pruned(s)} |");
        card.AppendLine();
        card.AppendLine("## Files");
        card.AppendLine();
        card.AppendLine(inv, $"- `{TextEncoderFolder}/{ModelFolder.OnnxModel}`: `{CLIPTextOnnx.InputIds}` int32 [batch, sequence] → `{CLIPTextOnnx.LastHiddenState}`.");
        card.AppendLine(inv, $"- `{UNetFolder}/{ModelFolder.OnnxModel}`: `{OnnxBundle.SampleInput}` float32 [batch, {pipeline.Unet.InChannels}, h, w], `{OnnxBundle.TimestepInput}` float32 [batch], " +
            $"`{UNet2DConditionOnnx.EncoderHiddenStatesInput}` float32 [batch, sequence, {pipeline.TextEncoder.Config.HiddenSize}] → `{OnnxBundle.Output}`; batch, size and sequence are dynamic.");
        card.AppendLine(inv, $"- `{VaeDecoderFolder}/{ModelFolder.OnnxModel}`: `{AutoencoderKLOnnx.LatentInput}` (latents divided by the scaling factor) → `{AutoencoderKLOnnx.SampleOutput}`, an image in [-1, 1].");
        card.AppendLine(inv, $"- `*/{ModelFolder.Config}`: each component's diffusers config (the U-Net's with its pruned widths, `dprune_structure`); `{TokenizerFolder}/`, `{SchedulerFolder}/`: the source's, unchanged.");
        card.AppendLine();
        card.AppendLine("## Use");
        card.AppendLine();
        card.AppendLine("```");
        card.AppendLine("dprune sample --model THIS_FOLDER --backend onnx --prompt \"...\" [--negative-prompt \"...\"] --guidance-scale 7.5 --steps 25 --seed 0 --output image.png");
        card.AppendLine("```");
        card.AppendLine();
        card.AppendLine("diffusers' `OnnxStableDiffusionPipeline.from_pretrained(THIS_FOLDER)` also opens it (it assumes SD 1.x's scaling factor 0.18215). " +
            "There is no VAE encoder (no image-to-image or inpainting) and no safety checker: generated images are not filtered.");
        if (prune is not null)
            ModelCardText.AppendPruning(card, prune, "U-Net parameters", "in the source pipeline");
        return card.ToString();
    }

    /// <summary>An existing folder an export may replace: an earlier ONNX pipeline (its model_index.json names the ONNX pipeline class).</summary>
    public static bool IsOnnxPipeline(string folder) => OnnxPipelineLayout.IsOnnxPipeline(folder);
}
