using DiffusionPrune.Families;
using DiffusionPrune.Models;

namespace DiffusionPrune.Tests.Cli;

/// <summary><c>dprune train</c> through the real executable: the DiT attention initialisation option.</summary>
public class TrainCliTests
{
    private const string TinyDiT = """
        {"_class_name": "DiTTransformer2DModel", "sample_size": 32, "in_channels": 1, "out_channels": 1, "patch_size": 8,
         "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 1, "num_embeds_ada_norm": 10,
         "norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": true}
        """;

    [Fact]
    public void A_DiT_trained_with_shared_query_key_init_runs_and_saves_a_loadable_model()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("dit.json"), TinyDiT);
        string output = temp.File("out");
        var (code, stdout, stderr) = CliTests.Dprune("train", "--arch", "dit", "--config", temp.File("dit.json"), "--steps", "2", "--batch", "4",
            "--warmup", "1", "--attention-init", "shared-qk", "--output", output);
        Assert.True(code == 0, stderr);
        Assert.Contains("done: 2 steps", stdout);
        using var model = (DiTTransformer2DModel)ModelFamilies.Load(output);
        Assert.Single(model.Blocks);
    }

    [Fact]
    public void A_training_run_whose_batch_does_not_fit_is_refused_before_the_model_is_built()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("dit.json"), TinyDiT);
        // the inference check (weights + one forward) passes at 64M; AdamW state, EMA and batch 100,000's activations do not
        var (code, _, stderr) = CliTests.Dprune("--max-memory", "64M", "train", "--arch", "dit", "--config", temp.File("dit.json"), "--steps", "1",
            "--batch", "100000", "--output", temp.File("out"));
        Assert.Equal(2, code);
        Assert.Contains("train: a training step at batch 100000 needs about", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.False(Directory.Exists(temp.File("out")));
    }

    [Fact]
    public void Attention_init_errors_are_one_line_messages()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("dit.json"), TinyDiT);
        var (code, _, stderr) = CliTests.Dprune("train", "--arch", "dit", "--config", temp.File("dit.json"), "--steps", "1",
            "--attention-init", "orthogonal", "--output", temp.File("a"));
        Assert.Equal(2, code);
        Assert.Contains("--attention-init must be xavier or shared-qk", stderr);

        (code, _, stderr) = CliTests.Dprune("train", "--arch", "unet", "--config", Path.Combine(Fixtures.RepoRoot, "samples", "configs", "mnist-unet.json"),
            "--steps", "1", "--attention-init", "shared-qk", "--output", temp.File("b"));
        Assert.Equal(2, code);
        Assert.Contains("applies to DiT models", stderr);
    }

    [Fact]
    public void A_U_Net_trains_on_a_folder_of_images_and_a_broken_image_is_named()
    {
        using var temp = Fixtures.Temp();
        const string tinyUNet = """
            {"_class_name": "UNet2DModel", "sample_size": 16, "in_channels": 3, "out_channels": 3,
             "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
            """;
        File.WriteAllText(temp.File("unet.json"), tinyUNet);
        string images = temp.File("images");
        Directory.CreateDirectory(images);
        for (int i = 0; i < 4; i++)
        {
            using var image = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24>(24, 24, new SixLabors.ImageSharp.PixelFormats.Rgb24(200, (byte)(50 * i), 30));
            SixLabors.ImageSharp.ImageExtensions.SaveAsPng(image, Path.Combine(images, $"{i}.png"));
        }
        var (code, stdout, stderr) = CliTests.Dprune("train", "--arch", "unet", "--config", temp.File("unet.json"), "--data", images,
            "--steps", "2", "--batch", "2", "--warmup", "1", "--output", temp.File("out"));
        Assert.True(code == 0, stderr);
        Assert.Contains("4 images (images in", stdout);
        Assert.Contains("done: 2 steps", stdout);
        using (var model = ModelFamilies.Load(temp.File("out")))
            Assert.Equal(3, model.InChannels);

        File.WriteAllText(Path.Combine(images, "notes.jpg"), "not an image");
        (code, _, stderr) = CliTests.Dprune("train", "--arch", "unet", "--config", temp.File("unet.json"), "--data", images,
            "--steps", "1", "--output", temp.File("out2"));
        Assert.Equal(2, code);
        Assert.Contains($"Cannot read image '{Path.Combine(images, "notes.jpg")}'", stderr);
    }
}
