using DiffusionPrune.Data;
using DiffusionPrune.Families;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Importance;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Data;

/// <summary>A folder of the user's own PNG/JPEG images as training and calibration data (--data DIR).</summary>
public class ImageFolderDatasetTests
{
    private static void Write(string path, int width, int height, Rgb24 colour, string format = "png")
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var image = new Image<Rgb24>(width, height, colour);
        if (format == "png") image.SaveAsPng(path); else image.SaveAsJpeg(path);
    }

    [Fact]
    public void Images_are_resized_to_the_model_and_read_as_grey_or_RGB_in_minus_one_to_one()
    {
        using var temp = Fixtures.Temp();
        Write(temp.File("a.png"), 64, 48, new Rgb24(255, 0, 0));
        Write(temp.File("b.png"), 8, 8, new Rgb24(0, 0, 0));

        var rgb = ImageFolderDataset.Load(temp.Path, channels: 3, height: 16, width: 16);
        Assert.Equal(2, rgb.Count);
        Assert.Null(rgb.NumClasses);
        Assert.Equal(["a.png", "b.png"], rgb.Files);
        using var scope = NewDisposeScope();
        var images = rgb.Images([0, 1]);
        Assert.Equal(new long[] { 2, 3, 16, 16 }, images.shape);
        Assert.Equal(1.0f, images[0, 0].min().item<float>(), 4); // red stays red after resizing a flat image
        Assert.Equal(-1.0f, images[0, 1].max().item<float>(), 4);
        Assert.Equal(-1.0f, images[1].max().item<float>(), 4);

        var grey = ImageFolderDataset.Load(temp.Path, channels: 1, height: 16, width: 16);
        var luma = grey.Images([0]);
        Assert.Equal(new long[] { 1, 1, 16, 16 }, luma.shape);
        Assert.Equal((float)(0.299 * 2 - 1), luma.mean().item<float>(), 3); // BT.601 luma of pure red
        Assert.Throws<InvalidOperationException>(() => grey.Labels([0]));
        Assert.Contains("has no labels", Assert.Throws<ArgumentException>(() => ImageDatasets.RequireLabelsFor(grey, 10)).Message);
        ImageDatasets.RequireLabelsFor(grey, null); // an unconditional model needs none
    }

    [Fact]
    public void Class_subfolders_give_labels_in_ordinal_order_of_their_names()
    {
        using var temp = Fixtures.Temp();
        Write(temp.File(Path.Combine("0", "x.png")), 8, 8, new Rgb24(10, 10, 10));
        Write(temp.File(Path.Combine("1", "y.jpg")), 8, 8, new Rgb24(200, 200, 200), "jpeg");
        Write(temp.File(Path.Combine("1", "z.png")), 8, 8, new Rgb24(200, 200, 200));
        Directory.CreateDirectory(temp.File("empty"));

        var data = ImageFolderDataset.Load(temp.Path, 1, 8, 8);
        Assert.Equal(2, data.NumClasses);
        Assert.Equal(["0", "1"], data.Classes);
        using var scope = NewDisposeScope();
        Assert.Equal(new long[] { 0, 1, 1 }, data.Labels([0, 1, 2]).data<long>().ToArray());
        ImageDatasets.RequireLabelsFor(data, 10); // two of ten classes: fine
        Assert.Contains("knows only 1", Assert.Throws<ArgumentException>(() => ImageDatasets.RequireLabelsFor(data, 1)).Message);
    }

    [Fact]
    public void Folders_that_cannot_serve_fail_with_one_line_naming_the_problem()
    {
        using var temp = Fixtures.Temp();
        Assert.Contains("holds no PNG or JPEG images", Assert.Throws<ArgumentException>(() => ImageFolderDataset.Load(temp.Path, 1, 8, 8)).Message);

        Write(temp.File("top.png"), 8, 8, default);
        Write(temp.File(Path.Combine("cats", "c.png")), 8, 8, default);
        Assert.Contains("both directly in it and in class subfolders", Assert.Throws<ArgumentException>(() => ImageFolderDataset.Load(temp.Path, 1, 8, 8)).Message);
        File.Delete(temp.File("top.png"));

        File.WriteAllBytes(temp.File(Path.Combine("cats", "broken.png")), [0x89, 0x50, 0x4E, 0x47, 1, 2, 3]);
        var error = Assert.Throws<InvalidDataException>(() => ImageFolderDataset.Load(temp.Path, 3, 8, 8));
        Assert.StartsWith($"Cannot read image '{temp.File(Path.Combine("cats", "broken.png"))}'", error.Message);
        Assert.DoesNotContain('\n', error.Message);

        Assert.Contains("1 (grey) or 3 (RGB)", Assert.Throws<ArgumentException>(() => ImageFolderDataset.Load(temp.Path, 4, 8, 8)).Message);
    }

    [Fact]
    public void Taylor_calibrates_on_a_folder_of_images_at_the_model_size()
    {
        using var temp = Fixtures.Temp();
        var random = new Random(5);
        for (int i = 0; i < 4; i++)
            Write(temp.File($"{i}.png"), 40, 40, new Rgb24((byte)random.Next(256), (byte)random.Next(256), (byte)random.Next(256)));
        using var model = ModelFamilies.Load(Fixtures.Diffusers("unet2d-small", "model"));
        var data = ImageDatasets.Open(temp.Path, model.InChannels, model.SampleSize[0], model.SampleSize[1]);
        var groups = PrunableGroups.Of(model);
        var context = new ImportanceContext(Path.Combine(Fixtures.Diffusers("unet2d-small"), "scheduler_config.json"), Steps: 2, CalibrationSamples: 4, Seed: 0,
            Device: CPU, CalibrationData: data);
        var scores = new TaylorImportance(new TaylorOptions { TimestepStride = 500 }).Score(model, groups, context);
        Assert.All(groups.Units, g => Assert.All(scores[g.Path], s => Assert.True(double.IsFinite(s) && s >= 0)));
        Assert.Contains(groups.Units, g => scores[g.Path].Any(s => s > 0));

        var tooMany = context with { CalibrationSamples = 5 };
        Assert.Contains("holds 4 images", Assert.Throws<ArgumentException>(() => new TaylorImportance().Score(model, groups, tooMany)).Message);
    }
}
