using DiffusionPrune.Data;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Evaluation;

/// <summary>Evaluation against a folder of the user's own images (--data DIR) instead of the MNIST test split.</summary>
public class EvalOnImagesTests
{
    private static void WriteGrey(string path, Tensor image)
    {
        // [1, H, W] in [-1, 1] -> 8-bit grey PNG
        var pixels = ((image[0] + 1) * 127.5).clamp(0, 255).to_type(ScalarType.Byte).data<byte>().ToArray();
        int h = (int)image.shape[1], w = (int)image.shape[2];
        using var png = Image.LoadPixelData<L8>(pixels, w, h);
        png.SaveAsPng(path);
    }

    [Fact]
    public void Rgb_and_other_sizes_enter_the_feature_net_as_grey_32_by_32()
    {
        using var scope = NewDisposeScope();
        var rgb = stack([full([8, 8], 1.0f), full([8, 8], 0.0f), full([8, 8], -1.0f)]).unsqueeze(0);
        var input = ModelEvaluator.FeatureInput(rgb);
        Assert.Equal(new long[] { 1, 1, 32, 32 }, input.shape);
        Assert.Equal(0.299 - 0.114, input.mean().item<float>(), 4);
        var mnistShaped = randn([2, 1, 32, 32]);
        Assert.Same(mnistShaped, ModelEvaluator.FeatureInput(mnistShaped)); // MNIST-shaped images pass unchanged
    }

    [Fact]
    public void A_folder_of_digits_ranks_the_trained_default_far_above_an_untrained_model_and_is_named_in_the_report()
    {
        using var temp = Fixtures.Temp();
        string digits = temp.File("digits");
        Directory.CreateDirectory(digits);
        var test = MnistDataset.Load().Test;
        using (var scope = NewDisposeScope())
        {
            var images = test.Images(Enumerable.Range(0, 300).ToArray());
            for (int i = 0; i < 300; i++) WriteGrey(Path.Combine(digits, $"{i:D3}.png"), images[i]);
        }
        string trained = Path.Combine(Fixtures.RepoRoot, "samples", "models", "mnist-unet");
        string untrained = temp.File("untrained");
        using (var model = ModelFamilies.Create(ConfigJson.Load(Path.Combine(trained, ModelFolder.Config))))
            DiffusersModelLoader.Save(model, untrained);
        File.Copy(Path.Combine(trained, ModelFolder.SchedulerConfig), Path.Combine(untrained, ModelFolder.SchedulerConfig));

        EvalReport Evaluate(string model) => ModelEvaluator.Evaluate(new EvalRequest
        {
            ModelPath = model, Data = digits, Samples = 96, Steps = 5, BatchSize = 48, BootstrapResamples = 20, Seed = 3,
        }, CPU);
        var good = Evaluate(trained);
        var bad = Evaluate(untrained);
        Assert.True(double.IsFinite(good.Fid.Value) && double.IsFinite(bad.Fid.Value));
        Assert.True(good.Fid.Value < 0.5 * bad.Fid.Value, $"trained {good.Fid.Value:F1} vs untrained {bad.Fid.Value:F1}");
        Assert.Equal("folder 'digits': 300 images as 1 x 32 x 32", good.Reference);
        Assert.Null(good.ClassAccuracy);
        var json = good.ToJson();
        Assert.Equal(ModelEvaluator.FeatureSpace, (string?)json["feature_space"]);
        Assert.DoesNotContain(temp.Path, json.ToJsonString()); // the folder by name, never its path
    }

    [Fact]
    public void An_rgb_model_of_another_size_is_evaluated_against_rgb_images_and_mnist_still_needs_mnist_shapes()
    {
        using var temp = Fixtures.Temp();
        string photos = temp.File("photos");
        Directory.CreateDirectory(photos);
        var random = new Random(4);
        for (int i = 0; i < 12; i++)
        {
            using var image = new Image<Rgb24>(20, 12);
            for (int y = 0; y < 12; y++)
                for (int x = 0; x < 20; x++)
                    image[x, y] = new Rgb24((byte)random.Next(256), (byte)random.Next(256), (byte)random.Next(256));
            image.SaveAsPng(Path.Combine(photos, $"p{i}.png"));
        }
        const string config = """
            {"_class_name": "UNet2DModel", "sample_size": 16, "in_channels": 3, "out_channels": 3,
             "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
            """;
        string folder = temp.File("rgb-unet");
        using (var model = ModelFamilies.Create(ConfigJson.Parse(config)))
            DiffusersModelLoader.Save(model, folder);
        File.WriteAllText(Path.Combine(folder, ModelFolder.SchedulerConfig), ModelFolder.DefaultSchedulerJson(classConditional: false));

        var request = new EvalRequest { ModelPath = folder, Data = photos, Samples = 8, Steps = 2, BatchSize = 8, BootstrapResamples = 10 };
        var report = ModelEvaluator.Evaluate(request, CPU);
        Assert.True(double.IsFinite(report.Fid.Value), report.Fid.ToString());
        Assert.Equal("folder 'photos': 12 images as 3 x 16 x 16", report.Reference);

        var mnist = Assert.Throws<ArgumentException>(() => ModelEvaluator.Evaluate(request with { Data = null }, CPU));
        Assert.Contains("unless --data names a folder of images", mnist.Message);
        Assert.Throws<DirectoryNotFoundException>(() => ModelEvaluator.Evaluate(request with { Data = temp.File("nowhere") }, CPU));
    }
}
