using DiffusionPrune.Data;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Training;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning.Importance;

/// <summary>
/// The images a data-driven criterion calibrates on: the data given, else the MNIST training split; for a text-conditioned
/// U-Net (a Stable Diffusion pipeline's) the pipeline's own samples from prompts (<see cref="TeacherSamples"/>).
/// </summary>
public static class CalibrationImages
{
    /// <summary>
    /// <paramref name="data"/> checked against the model's sample shape and classes, or the MNIST training split when null
    /// (which fits only 1 x 32 x 32 models of at least 10 classes). A text-conditioned model needs <see cref="TeacherSamples"/>:
    /// latents each paired with its prompt's text states, which the denoising loss conditions on (<see cref="ConditionsOf"/>).
    /// <paramref name="who"/> names the criterion in errors.
    /// </summary>
    public static IImageDataset Open(DiffusionModel model, IImageDataset? data, string who)
    {
        if (model.SampleSize is not [var h, var w])
            throw new ArgumentException($"{who} needs a model with a 2-D sample size, not {string.Join(" x ", model.SampleSize)}.");
        if (IsTextConditioned(model))
        {
            if (data is not TeacherSamples)
                throw new ArgumentException($"{who} on a {model.ClassName} calibrates on latents sampled from prompts, each with its prompt's text states: " +
                    "give the Stable Diffusion pipeline folder (model_index.json), whose U-Net samples them from --prompts, rather than its unet/ alone.");
            ImageDatasets.RequireShape(data, model.InChannels, h, w);
            return data;
        }
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

    /// <summary>
    /// What the images at <paramref name="indices"/> of <paramref name="data"/> (from <see cref="Open"/>) condition the model on
    /// besides the timestep, on the CPU: their class labels [B] for a class-conditional model; for a text-conditioned one the
    /// text states [B, tokens, D] of each latent's prompt (the conditional denoising loss, as the U-Net was trained; no
    /// prompt dropped to the empty one); neither otherwise.
    /// </summary>
    public static (Tensor? Labels, Tensor? TextStates) ConditionsOf(DiffusionModel model, IImageDataset data, ReadOnlySpan<int> indices)
    {
        if (IsTextConditioned(model))
        {
            var samples = data as TeacherSamples
                ?? throw new ArgumentException($"A {model.ClassName} calibrates on teacher samples with text states, not on {data.Name}.", nameof(data));
            using var prompts = samples.Labels(indices);
            return (null, samples.TextStates.index_select(0, prompts));
        }
        return (model.NumClasses is null ? null : data.Labels(indices), null);
    }

    private static bool IsTextConditioned(DiffusionModel model) => ModelFamilies.ConditioningOf(model).Kind == ConditioningKind.TextStates;
}
