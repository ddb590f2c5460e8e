using TorchSharp;

namespace DiffusionPrune;

/// <summary>
/// Smoke check the CLI prints: proves the native libtorch loads and runs one op. The skeleton's
/// Program.cs calls this but the class was missing, so nothing that references the CLI built.
/// </summary>
public static class Probe
{
    public static string Run()
    {
        using var scope = torch.NewDisposeScope();
        double sum = torch.arange(4, torch.float64).sum().item<double>();
        return $"TorchSharp OK: arange(4).sum() = {sum}";
    }
}
