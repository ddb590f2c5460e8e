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
    /// The timestep values to condition the model on, one per entry of <see cref="Timesteps"/> (diffusers'
    /// <c>scheduler.timesteps</c>). They equal <see cref="Timesteps"/> except where diffusers' schedule is fractional:
    /// Euler with linspace spacing feeds the model e.g. 978.6122 while <see cref="Timesteps"/> holds it rounded.
    /// </summary>
    double[] ModelTimesteps => Timesteps.Select(t => (double)t).ToArray();

    /// <summary>
    /// The standard deviation of the initial noise (diffusers' <c>init_noise_sigma</c>): a sampler multiplies unit
    /// Gaussian noise by it before the first step. 1 for the variance-preserving schedulers (DDPM, DDIM, DPM-Solver,
    /// PNDM); the largest sigma for the Euler schedulers, whose latents are x0 + σ·ε rather than a unit-variance mix.
    /// Read it after <see cref="SetTimesteps"/>: it may depend on the inference schedule.
    /// </summary>
    double InitNoiseSigma => 1.0;

    /// <summary>
    /// The model's input at <paramref name="timestep"/> (diffusers' <c>scale_model_input</c>), called once per step
    /// before the model and before <see cref="Step"/>. The Euler schedulers divide by sqrt(σ² + 1) so the model sees the
    /// variance-preserving x_t it was trained on; the others return the sample unchanged. The result is a new handle
    /// (created in the caller's dispose scope, if any), so the caller may dispose it whatever the scheduler.
    /// </summary>
    Tensor ScaleModelInput(Tensor sample, long timestep) => sample.alias();

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
