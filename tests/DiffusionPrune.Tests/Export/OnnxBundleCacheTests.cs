using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using Xunit;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Export;

/// <summary>ONNX bundles for previews: exported once per model content, again when the model changes.</summary>
public class OnnxBundleCacheTests
{
    private const string Config = """
        {"_class_name": "UNet2DModel", "sample_size": 16, "in_channels": 1, "out_channels": 1,
         "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
         "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}
        """;

    [Fact]
    public void A_model_is_exported_once_and_again_when_its_weights_change()
    {
        using var temp = Fixtures.Temp();
        string model = temp.File("my model");
        manual_seed(3);
        using (var m = ModelFamilies.Create(ConfigJson.Parse(Config))) DiffusersModelLoader.Save(m, model);
        var lines = new List<string>();
        string bundle = OnnxBundleCache.Ensure(model, temp.File("cache"), lines.Add);
        Assert.True(File.Exists(Path.Combine(bundle, ModelFolder.OnnxModel)));
        Assert.StartsWith("my-model-", Path.GetFileName(bundle));
        var written = File.GetLastWriteTimeUtc(Path.Combine(bundle, ModelFolder.OnnxModel));
        int exports = lines.Count(l => l.StartsWith("exporting", StringComparison.Ordinal));
        Assert.Equal(1, exports);

        Assert.Equal(bundle, OnnxBundleCache.Ensure(model, temp.File("cache"), lines.Add)); // cached: not exported again
        Assert.Equal(1, lines.Count(l => l.StartsWith("exporting", StringComparison.Ordinal)));
        Assert.Equal(written, File.GetLastWriteTimeUtc(Path.Combine(bundle, ModelFolder.OnnxModel)));

        manual_seed(4);
        using (var m = ModelFamilies.Create(ConfigJson.Parse(Config))) DiffusersModelLoader.Save(m, model); // new weights
        string changed = OnnxBundleCache.Ensure(model, temp.File("cache"), lines.Add);
        Assert.NotEqual(bundle, changed);
        Assert.Equal(2, Directory.GetDirectories(temp.File("cache")).Length);

        File.WriteAllText(Path.Combine(model, ModelFolder.SchedulerConfig), ModelFolder.DefaultSchedulerJson(classConditional: false)); // the scheduler it ships
        Assert.NotEqual(changed, OnnxBundleCache.Ensure(model, temp.File("cache"), lines.Add));
    }
}
