using System.Text.Json;
using DiffusionPrune.Formats;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Schedulers;

/// <summary>tests/fixtures/diffusers/schedulers: schedulers.safetensors (tensors diffusers computed) and case.json.</summary>
public sealed class SchedulerFixture : IDisposable
{
    public string Folder { get; } = Path.Combine(Fixtures.DiffusersRoot, "schedulers");
    public SafetensorsFile Tensors { get; }
    public JsonElement Case { get; }

    public SchedulerFixture()
    {
        Tensors = SafetensorsFile.Open(Path.Combine(Folder, "schedulers.safetensors"));
        // case.json is written by Python's json module: -Infinity appears bare, which System.Text.Json rejects.
        string text = File.ReadAllText(Path.Combine(Folder, "case.json")).Replace("-Infinity", "\"-Infinity\"");
        using var document = JsonDocument.Parse(text);
        Case = document.RootElement.Clone();
    }

    /// <summary>A config object from case.json, through the same parser users' files go through.</summary>
    public SchedulerConfig Config(params string[] path)
    {
        var element = Case;
        foreach (var key in path) element = element.GetProperty(key);
        return SchedulerConfig.Parse(element.GetRawText(), $"case.json:{string.Join('.', path)}");
    }

    public Tensor Float(string name) => Tensors.ReadFloat(name);

    public long[] Longs(string name)
    {
        using var tensor = Tensors.Read(name);
        Assert.Equal(ScalarType.Int64, tensor.dtype);
        return tensor.data<long>().ToArray();
    }

    public void Dispose() => Tensors.Dispose();
}

internal static class TensorAssert
{
    /// <summary>
    /// max |ours − ref| &lt;= relative · max(1, max |ref|); returns the max error so tests can report it.
    /// </summary>
    public static double Close(Tensor reference, Tensor actual, string what, double relative = 1e-5)
    {
        Assert.Equal(reference.shape, actual.shape);
        using var scope = torch.NewDisposeScope();
        var r = reference.to_type(ScalarType.Float64);
        var a = actual.detach().to_type(ScalarType.Float64);
        Assert.False(a.isnan().any().item<bool>(), $"{what}: NaN in our result");
        double maxError = (a - r).abs().max().item<double>();
        double scale = Math.Max(1.0, r.abs().max().item<double>());
        Assert.True(maxError <= relative * scale,
            $"{what}: max |ours - diffusers| = {maxError:E3} exceeds {relative:E0} * {scale:G6}");
        return maxError;
    }

    public static bool BitExact(Tensor reference, Tensor actual)
    {
        using var equal = reference.eq(actual.detach());
        using var all = equal.all();
        return all.item<bool>();
    }
}
