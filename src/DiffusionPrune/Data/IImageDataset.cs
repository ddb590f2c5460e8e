using static TorchSharp.torch;

namespace DiffusionPrune.Data;

/// <summary>
/// Images to train, calibrate or distil on: [N, C, H, W] float32 in [-1, 1] (what the models' data side expects),
/// optionally with class labels. <see cref="MnistSplit"/> is one; a folder of PNG/JPEG images
/// (<see cref="ImageFolderDataset"/>) is the other. Tensors returned are new and owned by the caller.
/// </summary>
public interface IImageDataset
{
    /// <summary>For messages and reports: "MNIST train split", "images in /data/faces (grey, 32x32)".</summary>
    string Name { get; }

    int Count { get; }
    int Channels { get; }
    int Height { get; }
    int Width { get; }

    /// <summary>Number of classes when the images are labelled, else null.</summary>
    int? NumClasses { get; }

    /// <summary>Images at <paramref name="indices"/>: float32 [N, Channels, Height, Width] in [-1, 1].</summary>
    Tensor Images(ReadOnlySpan<int> indices);

    /// <summary>Class labels at <paramref name="indices"/>: int64 [N]; throws when the dataset is unlabelled.</summary>
    Tensor Labels(ReadOnlySpan<int> indices);
}

/// <summary>Opens what users pass as <c>--data</c>, checked against the model that will use it.</summary>
public static class ImageDatasets
{
    /// <summary>The built-in data: the MNIST training split.</summary>
    public const string Mnist = "mnist";

    /// <summary>
    /// <c>mnist</c> (the shipped digits' training split), an MNIST data file (<see cref="MnistFile"/>), or a folder of
    /// PNG/JPEG images read at the model's channels and size. Throws a one-line error when the data cannot feed a model
    /// of <paramref name="channels"/> x <paramref name="height"/> x <paramref name="width"/>.
    /// </summary>
    public static IImageDataset Open(string spec, int channels, int height, int width)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(spec);
        IImageDataset dataset = Directory.Exists(spec)
            ? ImageFolderDataset.Load(spec, channels, height, width)
            : MnistDataset.Load(spec == Mnist ? null : spec).Train;
        RequireShape(dataset, channels, height, width);
        return dataset;
    }

    /// <summary>Throws a one-line error when <paramref name="dataset"/>'s images are not the model's shape.</summary>
    public static void RequireShape(IImageDataset dataset, int channels, int height, int width)
    {
        if (dataset.Channels != channels || dataset.Height != height || dataset.Width != width)
            throw new ArgumentException(
                $"The {dataset.Name} holds {dataset.Channels} x {dataset.Height} x {dataset.Width} images, but the model takes {channels} x {height} x {width}. " +
                "Give a folder of images (--data DIR): they are resized and converted to the model's channels.");
    }

    /// <summary>Throws a one-line error when a class-conditional model would need labels this dataset lacks or has too few of.</summary>
    public static void RequireLabelsFor(IImageDataset dataset, int? modelClasses)
    {
        if (modelClasses is not int classes) return;
        if (dataset.NumClasses is not int have)
            throw new ArgumentException($"The model is class-conditional ({classes} classes), but the {dataset.Name} has no labels. " +
                "Put each class's images in a subfolder of its own (0/, 1/, ... in the order of the model's classes).");
        if (have > classes)
            throw new ArgumentException($"The {dataset.Name} has {have} classes, but the model knows only {classes}.");
    }
}
