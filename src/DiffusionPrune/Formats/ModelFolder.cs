// BCL-only: samples/OnDeviceDemo compiles this file (the bundle half of the contract is the demo's too).
namespace DiffusionPrune.Formats;

/// <summary>
/// The model-folder contract, in one place: every file dprune reads or writes in a model folder or an exported
/// bundle, and what it holds. Everything else refers to these names; docs/ARCHITECTURE.md shows the layout.
/// <code>
/// model folder (diffusers layout)          exported bundle
///   config.json                              config.json, diffusion_pytorch_model.safetensors (format safetensors)
///   diffusion_pytorch_model.safetensors      model.onnx + onnx_model.json                     (format onnx)
///   scheduler_config.json                    scheduler_config.json
///   prune_report.json, prune_plan.json       README.md (the model card)
///   eval_report.json (batch items)
/// </code>
/// </summary>
public static class ModelFolder
{
    /// <summary>diffusers' model config; a pruned model adds its narrower widths under <c>dprune_structure</c>.</summary>
    public const string Config = "config.json";

    /// <summary>The stem of diffusers' weights files (<c>.safetensors</c>, <c>.fp16.safetensors</c>, <c>.safetensors.index.json</c>).</summary>
    public const string WeightsStem = "diffusion_pytorch_model";

    /// <summary>The weights dprune writes: float32 safetensors, keys as diffusers names them.</summary>
    public const string Weights = WeightsStem + ".safetensors";

    /// <summary>A sharded checkpoint's index (read, never written).</summary>
    public const string WeightsIndex = Weights + ".index.json";

    /// <summary>A diffusers pipeline folder's index; the denoiser is then in its <c>unet/</c> or <c>transformer/</c> subfolder.</summary>
    public const string PipelineIndex = "model_index.json";

    /// <summary>diffusers' scheduler config, beside the model or in a pipeline's <c>scheduler/</c>.</summary>
    public const string SchedulerConfig = "scheduler_config.json";

    /// <summary>What <c>dprune prune</c> did: method, settings, kept fraction per layer, parameters and MACs before and after, time, memory.</summary>
    public const string PruneReport = "prune_report.json";

    /// <summary>The pruning plan applied (kept units per group, removed layers): reapplies to the original model.</summary>
    public const string PrunePlan = "prune_plan.json";

    /// <summary>A batch item's evaluation (the same JSON as <c>dprune eval --output</c>).</summary>
    public const string EvalReport = "eval_report.json";

    /// <summary>An exported bundle's model card.</summary>
    public const string ModelCard = "README.md";

    /// <summary>An exported bundle's ONNX graph: the denoiser forward.</summary>
    public const string OnnxModel = "model.onnx";

    /// <summary>Beside <see cref="OnnxModel"/>: inputs, shapes, class, config and checksums a runtime needs without parsing the graph.</summary>
    public const string OnnxInfo = "onnx_model.json";

    /// <summary>The arguments <c>dprune train</c> ran with, beside the trained model.</summary>
    public const string TrainingArgs = "training_args.json";

    /// <summary>
    /// The scheduler config a trained model ships with: DDPM, 1000 linear-beta steps, epsilon prediction; clipping
    /// x0 for unconditional models only. Guidance pushes the predicted x0 far outside [-1, 1]; diffusers' DDIM then
    /// steps with the clipped x0 but the unclipped noise prediction, an inconsistency that compounds with every
    /// step. Measured on the DiT default (guidance 3, N = 200): clipping gave 63.5% / 37% class accuracy at 10 / 25
    /// DDIM steps, no clipping 76% / 73%. Unconditional models keep clipping: the U-Net default without it scores
    /// FID-proxy 1,563 instead of 120.
    /// </summary>
    public static string DefaultSchedulerJson(bool classConditional) =>
        (classConditional ? DefaultSchedule.Replace("\"clip_sample\": true", "\"clip_sample\": false", StringComparison.Ordinal) : DefaultSchedule).Trim() + "\n";

    /// <summary>The unconditional default (<see cref="DefaultSchedulerJson"/> with clipping).</summary>
    public const string DefaultSchedule = """
        {
          "_class_name": "DDPMScheduler",
          "num_train_timesteps": 1000,
          "beta_start": 0.0001,
          "beta_end": 0.02,
          "beta_schedule": "linear",
          "clip_sample": true,
          "clip_sample_range": 1.0,
          "prediction_type": "epsilon",
          "variance_type": "fixed_small",
          "timestep_spacing": "leading",
          "steps_offset": 0
        }
        """;
}
