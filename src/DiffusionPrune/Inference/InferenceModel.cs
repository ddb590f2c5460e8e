using DiffusionPrune.Analysis;
using DiffusionPrune.Families;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Inference;

/// <summary>
/// A denoiser loaded for sampling on one backend: <c>torch</c> (a diffusers folder, TorchSharp on --device) or
/// <c>onnx</c> (an exported bundle, ONNX Runtime on --provider). Sample and eval see only this, so the schedulers,
/// guidance, seeds and metrics are the same code whichever backend runs the network.
/// </summary>
public sealed class InferenceModel : IDisposable
{
    public static readonly string[] Backends = ["torch", "onnx"];

    private readonly DiffusionModel? _torch;
    private readonly OnnxDenoiser? _onnx;

    /// <summary>The folder the model came from.</summary>
    public string Path { get; }
    public string Backend => _onnx is null ? "torch" : "onnx";
    public string ClassName { get; }
    public int InChannels { get; }
    public int[] SampleSize { get; }
    public int? NumClasses { get; }
    public int? NullClass { get; }

    /// <summary>Where sampling tensors live: the torch model's device, or the CPU for ONNX (ONNX Runtime has its own).</summary>
    public Device Device { get; }

    /// <summary>What runs the network, for reports: "torch (cpu)", "onnx (CPU)", "onnx (DirectML)".</summary>
    public string Runtime => _onnx is null ? $"torch ({Device.type.ToString().ToLowerInvariant()})" : $"onnx ({_onnx.Session.Provider.DisplayName()})";

    public DiffusionSampler.Denoise Denoise { get; }

    /// <summary>The torch model (null on the ONNX backend).</summary>
    public DiffusionModel? TorchModel => _torch;

    private readonly bool _ownsTorch = true;

    private InferenceModel(string path, DiffusionModel model, Device device, bool owns = true)
    {
        Path = path;
        _torch = model;
        _ownsTorch = owns;
        ClassName = model.ClassName;
        InChannels = model.InChannels;
        SampleSize = model.SampleSize;
        NumClasses = model.NumClasses;
        NullClass = model.NullClass;
        Device = device;
        Denoise = model.Predict;
    }

    private InferenceModel(string path, OnnxDenoiser onnx)
    {
        Path = path;
        _onnx = onnx;
        var info = onnx.Model;
        ClassName = info.ClassName ?? "ONNX model";
        InChannels = info.InChannels;
        SampleSize = info.SampleSize;
        NumClasses = info.NumClasses;
        NullClass = info.NullClass;
        Device = CPU;
        Denoise = onnx.Denoise;
    }

    /// <param name="backend">torch | onnx.</param>
    /// <param name="device">The torch device (the ONNX backend samples on the CPU and runs the network on <paramref name="provider"/>).</param>
    /// <param name="provider">ONNX Runtime execution provider: auto | cpu | directml | cuda.</param>
    /// <param name="report">Receives the ONNX provider lines (fallbacks, then the provider that runs).</param>
    public static InferenceModel Load(string path, string backend, Device device, string provider = "auto", Action<string>? report = null)
    {
        switch ((backend ?? "").Trim().ToLowerInvariant())
        {
            case "torch":
                return new InferenceModel(path, ModelFamilies.Load(path, device: device), device);
            case "onnx":
                OnnxExecutionProviders.Normalize(provider); // an unknown --provider is reported before the bundle is looked at
                return new InferenceModel(path, OnnxDenoiser.Open(path, provider, report));
            default:
                throw new ArgumentException($"Unknown backend '{backend}'. Use one of: {string.Join(", ", Backends)}.");
        }
    }

    /// <summary>
    /// A model already in memory (a stage's hand-off), for sampling on the torch backend; disposing the result leaves
    /// <paramref name="model"/> to its owner. <paramref name="path"/> is the folder it came from or was saved to, if any
    /// (for its scheduler config and the report's name).
    /// </summary>
    /// <param name="owns">Dispose <paramref name="model"/> with the result (a model made for it, such as a pruned one).</param>
    /// <param name="schedulerConfigPath">The scheduler config of a model that has no folder of its own yet.</param>
    public static InferenceModel Wrap(DiffusionModel model, string path, bool owns = false, string? schedulerConfigPath = null) =>
        new(path, model, model.parameters().FirstOrDefault()?.device ?? CPU, owns) { _schedulerConfigPath = schedulerConfigPath };

    private string? _schedulerConfigPath;

    /// <summary>The scheduler config that belongs with the model: the bundle's scheduler_config.json, or the diffusers folder's.</summary>
    public string? FindSchedulerConfig() =>
        _schedulerConfigPath is not null ? _schedulerConfigPath
        : _onnx is not null ? OnnxBundle.FindSchedulerConfig(Path) : DiffusersModelLoader.FindSchedulerConfig(Path);

    /// <summary>Parameters and MACs per image: counted on the torch model, read from onnx_model.json for a bundle.</summary>
    public (long Parameters, long Macs) Cost()
    {
        if (_onnx is not null) return (_onnx.Model.Parameters, _onnx.Model.Macs);
        var cost = ModelCost.Measure(_torch!);
        return (cost.Parameters, cost.Macs);
    }

    /// <summary><see cref="DiffusionSampler.Sample(DiffusionSampler.Denoise, int?, IDiffusionScheduler, Tensor, Tensor?, SampleOptions, Generator?, Action{int, int}?)"/> without gradients.</summary>
    public SampleResult Sample(IDiffusionScheduler scheduler, Tensor noise, Tensor? classLabels, SampleOptions options,
        Generator? generator = null, Action<int, int>? progress = null)
    {
        if (NumClasses is not null && classLabels is null)
            throw new ArgumentException($"{ClassName} is class-conditional: give class labels.");
        using var noGrad = no_grad();
        return DiffusionSampler.Sample(Denoise, NullClass, scheduler, noise, classLabels, options, generator, progress);
    }

    public void Dispose()
    {
        if (_ownsTorch) _torch?.Dispose();
        _onnx?.Dispose();
    }
}
