using DiffusionPrune.Models;
using DiffusionPrune.Schedulers;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>Importance of every unit of every unit group: group path -> one score per unit; higher means keep.</summary>
public sealed class UnitScores
{
    public SortedDictionary<string, float[]> ByGroup { get; } = new(StringComparer.Ordinal);

    public float[] this[string path]
    {
        get => ByGroup[path];
        set => ByGroup[path] = value;
    }
}

/// <summary>What a criterion may use: the sampler settings and calibration budget, seeded.</summary>
/// <param name="SchedulerConfigPath">scheduler_config.json of the model (betas, spacing, prediction type).</param>
/// <param name="SchedulerName">Sampler used for calibration trajectories: ddim (default) | ddpm | dpm++2m.</param>
/// <param name="Steps">Sampling steps of a calibration trajectory.</param>
/// <param name="CalibrationSamples">Number of calibration noises (and labels).</param>
/// <param name="CalibrationData">Images for criteria that calibrate on data (Taylor); null means the criterion's default (MNIST).</param>
/// <param name="CalibrationText">Prompts and their text states for text-conditioned models (a Stable Diffusion U-Net); null for the others.</param>
public sealed record ImportanceContext(
    string SchedulerConfigPath, int Steps, int CalibrationSamples, long Seed, Device Device,
    string? SchedulerName = "ddim", Action<string>? Log = null, Data.IImageDataset? CalibrationData = null,
    CancellationToken Cancellation = default, TextCalibration? CalibrationText = null);

/// <summary>
/// The prompts a text-conditioned model calibrates on and their text-encoder states, one row per prompt
/// (<see cref="Inference.PromptEmbeddings.PromptEmbeds"/> [P, tokens, D]; the negative, empty prompt's states beside them
/// when guidance is above 1). Calibration sample k is conditioned on prompt k mod P. Borrowed: the creator disposes them.
/// </summary>
public sealed record TextCalibration(IReadOnlyList<string> Prompts, Inference.PromptEmbeddings Embeddings);

/// <summary>
/// An importance criterion (Torch-Pruning style): a function from the model's unit groups to scores.
/// Turning scores into a plan (<c>PlanSelector</c>) and applying a plan (<c>StructuralSurgery</c>) are separate.
/// </summary>
public interface IImportanceCriterion
{
    /// <summary>Name used on the command line and in reports: ecodiff | magnitude | random | taylor.</summary>
    string Name { get; }

    UnitScores Score(DiffusionModel model, PrunableGroups groups, ImportanceContext context);
}
