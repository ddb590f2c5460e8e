using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>Config and argument checks the schedulers share, so each error reads the same everywhere.</summary>
internal static class SchedulerValidation
{
    public static readonly string[] PredictionTypes = ["epsilon", "v_prediction", "sample"];
    public static readonly string[] Spacings = ["leading", "trailing", "linspace"];

    public static void RejectThresholding(SchedulerConfig config, string scheduler)
    {
        if (config.Thresholding)
            throw new NotSupportedException($"{scheduler}: thresholding (dynamic thresholding, Imagen) is not supported. Set \"thresholding\": false; use clip_sample for pixel-space models.");
    }

    public static void CheckPredictionType(SchedulerConfig config, string scheduler)
    {
        if (!PredictionTypes.Contains(config.PredictionType))
            throw new NotSupportedException($"{scheduler}: prediction_type '{config.PredictionType}' is not supported. Supported: {string.Join(", ", PredictionTypes)}.");
    }

    public static void CheckSpacing(SchedulerConfig config, string scheduler)
    {
        if (!Spacings.Contains(config.TimestepSpacing))
            throw new NotSupportedException($"{scheduler}: timestep_spacing '{config.TimestepSpacing}' is not supported. Supported: {string.Join(", ", Spacings)}.");
    }

    public static void CheckStepCount(int numInferenceSteps, int numTrainTimesteps, string scheduler)
    {
        if (numInferenceSteps < 1)
            throw new ArgumentOutOfRangeException(nameof(numInferenceSteps), $"{scheduler}: the number of inference steps must be at least 1 (got {numInferenceSteps}).");
        if (numInferenceSteps > numTrainTimesteps)
            throw new ArgumentOutOfRangeException(nameof(numInferenceSteps), $"{scheduler}: {numInferenceSteps} inference steps cannot exceed num_train_timesteps ({numTrainTimesteps}): the model was trained on {numTrainTimesteps} timesteps only.");
    }

    public static void CheckSameShape(Tensor modelOutput, Tensor sample, string scheduler)
    {
        if (!modelOutput.shape.SequenceEqual(sample.shape))
            throw new ArgumentException(
                $"{scheduler}: model output [{string.Join(", ", modelOutput.shape)}] does not match the sample [{string.Join(", ", sample.shape)}]. " +
                "A learned-sigma model outputs 2C channels: pass modelOutput[:, :C] (the noise/x0/v prediction) to the scheduler.");
    }
}
