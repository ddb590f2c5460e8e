using DiffusionPrune.Data;
using DiffusionPrune.Models;

namespace DiffusionPrune.Pruning.Importance;

/// <summary>The images a data-driven criterion calibrates on: the data given, else the MNIST training split.</summary>
public static class CalibrationImages
{
    /// <summary>
    /// <paramref name="data"/> checked against the model's sample shape and classes, or the MNIST training split when null
    /// (which fits only 1 x 32 x 32 models of at least 10 classes). <paramref name="who"/> names the criterion in errors.
    /// </summary>
    public static IImageDataset Open(DiffusionModel model, IImageDataset? data, string who)
    {
        if (model.SampleSize is not [var h, var w])
            throw new ArgumentException($"{who} needs a model with a 2-D sample size, not {string.Join(" x ", model.SampleSize)}.");
        if (data is not null)
        {
            ImageDatasets.RequireShape(data, model.InChannels, h, w);
            ImageDatasets.RequireLabelsFor(data, model.NumClasses);
            return data;
        }
        int size = MnistDataset.ImageSize;
        if (model.InChannels != 1 || h != size || w != size)
            throw new ArgumentException(
                $"{who} calibrates on MNIST images (1 x {size} x {size}) unless given data, but the model takes {model.InChannels} x {h} x {w} samples. " +
                "Give it a folder of images (--data DIR), or use a data-free criterion.");
        if (model.NumClasses is int classes && classes < 10)
            throw new ArgumentException($"The model has {classes} classes, but the calibration labels are the MNIST digits 0..9; it needs at least 10 classes.");
        return MnistDataset.Load().Train;
    }
}
