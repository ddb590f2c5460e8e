using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Runtime;

/// <summary>Resolves <c>--device auto|cpu|cuda</c>, falling back to the CPU with a message when CUDA is absent.</summary>
public static class DeviceSelector
{
    public static readonly string[] Choices = ["auto", "cpu", "cuda"];

    /// <param name="report">Receives a line saying which device runs and, on fallback, why.</param>
    public static Device Resolve(string choice, Action<string>? report = null)
    {
        switch (choice.ToLowerInvariant())
        {
            case "cpu":
                return CPU;
            case "auto":
                return cuda.is_available() ? CUDA : CPU;
            case "cuda":
                if (cuda.is_available()) return CUDA;
                report?.Invoke("CUDA was requested but is not available (this build uses the CPU libtorch, or no GPU is present); running on the CPU. " +
                    "Build with -p:TorchBackend=cuda-windows (or cuda-linux) on a machine with an NVIDIA GPU to use CUDA.");
                return CPU;
            default:
                throw new ArgumentException($"Unknown device '{choice}'. Use one of: {string.Join(", ", Choices)}.");
        }
    }
}
