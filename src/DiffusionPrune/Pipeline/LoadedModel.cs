using DiffusionPrune.Families;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;

namespace DiffusionPrune.Pipeline;

/// <summary>
/// A model a <see cref="DiffusionPipeline"/> holds in memory for its stages: loaded from a folder (a diffusers folder
/// on the torch backend, an exported bundle on the ONNX backend) or made by a stage (a pruned model, with its report).
/// The pipeline owns it and disposes it; stages borrow it.
/// </summary>
public sealed class LoadedModel : IDisposable
{
    internal LoadedModel(string path, string backend, InferenceModel inference, PruneReport? prune = null)
    {
        Path = path;
        Backend = backend;
        Inference = inference;
        Prune = prune;
    }

    /// <summary>The folder it was loaded from or saved to: its key in the pipeline and its name in reports.</summary>
    public string Path { get; }

    /// <summary>torch | onnx.</summary>
    public string Backend { get; }

    /// <summary>The model as samplers and metrics see it, whichever backend runs it.</summary>
    public InferenceModel Inference { get; }

    /// <summary>The torch model (pruning, export, TorchSharp latency need it); an error for an ONNX bundle.</summary>
    public DiffusionModel Torch => Inference.TorchModel
        ?? throw new ArgumentException($"'{Path}' is an ONNX bundle; this stage needs the diffusers folder (config.json + safetensors).");

    /// <summary>The model's family (torch backend only).</summary>
    public ModelFamily Family => ModelFamilies.Of(Torch);

    /// <summary>The prune stage's report, for a model that stage made.</summary>
    public PruneReport? Prune { get; }

    public string ClassName => Inference.ClassName;

    public void Dispose() => Inference.Dispose();
}
