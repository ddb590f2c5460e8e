using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests;

/// <summary>Locates the repository and its reference fixtures (tests/fixtures/diffusers).</summary>
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

    /// <summary>
    /// tests/fixtures/diffusers: diffusers' reference outputs, vendored so a clone stands alone (copied from
    /// ../shared/fixtures/diffusers, the source; <see cref="FixtureManifestTests"/> checks both).
    /// </summary>
    public static string DiffusersRoot
    {
        get
        {
            string path = Path.Combine(RepoRoot, "tests", "fixtures", "diffusers");
            if (!Directory.Exists(path))
                throw new DirectoryNotFoundException($"The diffusers reference fixtures are missing: expected {path}.");
            return path;
        }
    }

    /// <summary>The source the fixtures are copied from, when it sits beside the clone (null otherwise).</summary>
    public static string? SharedDiffusersRoot
    {
        get
        {
            string path = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "fixtures", "diffusers"));
            return Directory.Exists(path) ? path : null;
        }
    }

    /// <summary>A fixture file or folder; a missing one fails the test that asks for it, naming the path.</summary>
    public static string Diffusers(params string[] parts)
    {
        string path = Path.Combine([DiffusersRoot, .. parts]);
        if (!File.Exists(path) && !Directory.Exists(path))
            throw new FileNotFoundException($"The diffusers reference fixture '{string.Join('/', parts)}' is missing (expected {path}); " +
                "tests/fixtures/diffusers.sha256 lists every fixture.", path);
        return path;
    }

    /// <summary>A fresh temporary folder, removed when disposed.</summary>
    public static TempFolder Temp() => new();

    /// <summary>
    /// A freshly initialised 1 x 32 x 32 U-Net (the shape evaluation accepts; 8/16 channels, one attention level) saved
    /// with a scheduler config in <c>temp/name</c>, weights drawn from <paramref name="seed"/>; returns the folder.
    /// </summary>
    public static string TinyEvaluableUNet(TempFolder temp, string name = "tiny", long seed = 11)
    {
        const string config = """
            {"_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 1, "out_channels": 1,
             "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
            """;
        manual_seed(seed);
        using var model = DiffusionPrune.Families.ModelFamilies.Create(DiffusionPrune.Models.ConfigJson.Parse(config));
        string folder = temp.File(name);
        DiffusionPrune.Models.DiffusersModelLoader.Save(model, folder);
        File.Copy(Diffusers("unet2d-small", "scheduler_config.json"), Path.Combine(folder, DiffusionPrune.Formats.ModelFolder.SchedulerConfig));
        return folder;
    }

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
