// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL and Microsoft.ML.OnnxRuntime here.
namespace DiffusionPrune.Inference.Onnx;

/// <summary>The ONNX Runtime execution providers we choose between.</summary>
public enum OnnxExecutionProvider
{
    Cpu,
    /// <summary>DirectX 12 GPUs on Windows; needs the Microsoft.ML.OnnxRuntime.DirectML build (-p:OnnxBackend=directml).</summary>
    DirectML,
    /// <summary>NVIDIA GPUs; needs an ONNX Runtime build with the CUDA provider and the CUDA/cuDNN libraries.</summary>
    Cuda,
}

public static class OnnxExecutionProviders
{
    /// <summary>The values <c>--provider</c> accepts.</summary>
    public static readonly string[] Choices = ["auto", "cpu", "directml", "cuda"];

    /// <summary>The name ONNX Runtime lists in <c>GetAvailableProviders()</c>.</summary>
    public static string RuntimeName(this OnnxExecutionProvider provider) => provider switch
    {
        OnnxExecutionProvider.DirectML => "DmlExecutionProvider",
        OnnxExecutionProvider.Cuda => "CUDAExecutionProvider",
        _ => "CPUExecutionProvider",
    };

    /// <summary>The name we print: CPU, DirectML, CUDA.</summary>
    public static string DisplayName(this OnnxExecutionProvider provider) => provider switch
    {
        OnnxExecutionProvider.DirectML => "DirectML",
        OnnxExecutionProvider.Cuda => "CUDA",
        _ => "CPU",
    };

    /// <summary>
    /// The providers to try for a <c>--provider</c> value, best first; the CPU always ends the list.
    /// <c>auto</c> means DirectML, then CUDA, then the CPU.
    /// </summary>
    public static OnnxExecutionProvider[] Candidates(string choice) => Normalize(choice) switch
    {
        "auto" => [OnnxExecutionProvider.DirectML, OnnxExecutionProvider.Cuda, OnnxExecutionProvider.Cpu],
        "directml" => [OnnxExecutionProvider.DirectML, OnnxExecutionProvider.Cpu],
        "cuda" => [OnnxExecutionProvider.Cuda, OnnxExecutionProvider.Cpu],
        _ => [OnnxExecutionProvider.Cpu],
    };

    /// <summary>Lower-cases a <c>--provider</c> value ("dml" is accepted for directml) or throws for an unknown one.</summary>
    public static string Normalize(string choice)
    {
        string value = (choice ?? "").Trim().ToLowerInvariant();
        if (value == "dml") value = "directml";
        if (Array.IndexOf(Choices, value) < 0)
            throw new ArgumentException($"Unknown ONNX Runtime provider '{choice}'. Use one of: {string.Join(", ", Choices)}.");
        return value;
    }
}
