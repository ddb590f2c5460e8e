using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests;

/// <summary>Locates the shared reference fixtures (../shared/fixtures/diffusers beside the repository).</summary>
public static class Fixtures
{
    private static readonly Lazy<string> Root = new(() =>
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Diffusion.sln")))
            dir = dir.Parent;
        if (dir is null) throw new DirectoryNotFoundException("Could not find the repository root (Diffusion.sln) above " + AppContext.BaseDirectory);
        return dir.FullName;
    });

    public static string RepoRoot => Root.Value;

    public static string DiffusersRoot
    {
        get
        {
            string path = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "fixtures", "diffusers"));
            if (!Directory.Exists(path))
                throw new DirectoryNotFoundException($"The shared diffusers fixtures are missing: expected {path}.");
            return path;
        }
    }

    public static string Diffusers(params string[] parts) => Path.Combine([DiffusersRoot, .. parts]);

    /// <summary>A fresh temporary folder, removed when disposed.</summary>
    public static TempFolder Temp() => new();

    /// <summary>max |actual - expected| relative to max(1, max |expected|).</summary>
    public static double RelativeError(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        double diff = (actual.to_type(ScalarType.Float64) - expected.to_type(ScalarType.Float64)).abs().max().item<double>();
        double scale = Math.Max(1.0, expected.abs().max().to_type(ScalarType.Float64).item<double>());
        return diff / scale;
    }
}

public sealed class TempFolder : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "dprune-test-" + Guid.NewGuid().ToString("N")[..12]);
    public TempFolder() => Directory.CreateDirectory(Path);
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
