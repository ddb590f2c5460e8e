using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Schedulers;

/// <summary>
/// One denoising step's result. Both tensors belong to the caller (they are created in the caller's dispose scope,
/// if any). <see cref="PredOriginalSample"/> is the scheduler's estimate of x0 (after clipping, when clipping is on).
/// </summary>
public sealed record SchedulerStepResult(Tensor PrevSample, Tensor PredOriginalSample);

/// <summary>
/// A diffusers noise scheduler. Tensors it exposes (<see cref="AlphasCumprod"/>) are owned by the scheduler: do not
/// dispose them; dispose the scheduler instead.
/// <para>
/// <c>modelOutput</c> must have the sample's shape. A learned-sigma model (DiT, IDDPM: 2C output channels) is split by
/// the caller, <c>modelOutput[:, :C]</c>, except for DDPM with variance_type learned/learned_range, which takes the
/// whole 2C output and uses the second half as diffusers does.
/// </para>
/// </summary>
public interface IDiffusionScheduler : IDisposable
{
    SchedulerConfig Config { get; }

    /// <summary>float32 [num_train_timesteps], on the CPU.</summary>
    Tensor AlphasCumprod { get; }

    /// <summary>The inference timesteps after <see cref="SetTimesteps"/> (before it: num_train_timesteps-1 .. 0). A copy.</summary>
    long[] Timesteps { get; }

    /// <summary>The step count last given to <see cref="SetTimesteps"/>; null before the first call.</summary>
    int? NumInferenceSteps { get; }

    void SetTimesteps(int numInferenceSteps);

    /// <summary>
    /// x_t -> x_{t-1}. <paramref name="varianceNoise"/> is the standard normal noise for the stochastic part, used as
    /// given; when it is null and the step needs noise it is drawn from <paramref name="generator"/> (or the global one).
    /// </summary>
    SchedulerStepResult Step(Tensor modelOutput, long timestep, Tensor sample, Tensor? varianceNoise = null, torch.Generator? generator = null);

    /// <summary>q(x_t | x_0): the noisy sample for training. <paramref name="timesteps"/> is an integer tensor [batch] (or a scalar).</summary>
    Tensor AddNoise(Tensor original, Tensor noise, Tensor timesteps);

    /// <summary>The v-prediction target sqrt(acp)·noise − sqrt(1−acp)·sample.</summary>
    Tensor GetVelocity(Tensor sample, Tensor noise, Tensor timesteps);

    /// <summary>A new scheduler with the same config and timesteps and no multistep state.</summary>
    IDiffusionScheduler CloneFresh();
}
