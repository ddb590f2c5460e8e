using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Inference;

/// <summary>One denoiser forward from tensors in a safetensors file: the contract of <c>dprune forward</c>.</summary>
public static class ForwardRunner
{
    /// <summary>Reads <c>sample</c>, <c>timestep</c> and, when present, <c>class_labels</c>; writes <c>output</c> (F32).</summary>
    public static void Run(DiffusionModel model, string inputPath, string outputPath, Device device)
    {
        using var input = SafetensorsFile.Open(inputPath);
        foreach (var required in new[] { "sample", "timestep" })
            if (!input.Contains(required))
                throw new ArgumentException($"'{inputPath}' has no tensor '{required}'. The input needs 'sample' [B, C, H, W] and 'timestep' (scalar or [B]); 'class_labels' [B] for class-conditional models.");
        if (input.Contains("encoder_hidden_states"))
            throw new ArgumentException($"'{inputPath}' holds encoder_hidden_states, but {model.ClassName} is not text-conditioned (UNet2DConditionModel is not supported yet).");

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var sample = input.ReadFloat("sample").to(device);
        if (sample.dim() != 4 || sample.shape[1] != model.InChannels)
            throw new ArgumentException($"'sample' has shape [{string.Join(", ", sample.shape)}]; {model.ClassName} expects [B, {model.InChannels}, H, W].");
        var timestep = input.Read("timestep").to(device);
        Tensor? labels = null;
        if (input.Contains("class_labels"))
            labels = input.Read("class_labels").to_type(ScalarType.Int64).to(device);
        else if (model.NumClasses is not null)
            throw new ArgumentException($"{model.ClassName} is class-conditional: '{inputPath}' needs 'class_labels' [B] (use {model.NumClasses} for the null class).");
        var output = model.Forward(sample, timestep, labels).to_type(ScalarType.Float32).cpu();
        SafetensorsWriter.Write(outputPath, new Dictionary<string, Tensor> { ["output"] = output });
    }
}
