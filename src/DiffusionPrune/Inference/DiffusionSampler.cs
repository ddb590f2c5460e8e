using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Inference;

/// <summary>How to run the sampling loop.</summary>
/// <param name="Steps">Inference steps given to the scheduler.</param>
/// <param name="GuidanceScale">Classifier-free guidance weight; 1 means plain conditional sampling.</param>
/// <param name="KeepTrajectory">Keep the latent after every step ([steps, B, C, H, W]).</param>
public sealed record SampleOptions(int Steps, double GuidanceScale = 1.0, bool KeepTrajectory = false);

/// <summary>The final latents and, when asked, the latent after each step.</summary>
public sealed record SampleResult(Tensor Final, Tensor? Trajectory, long[] Timesteps);

/// <summary>
/// Text conditioning for a cross-attention denoiser, as diffusers' Stable Diffusion pipelines name it: the prompt's
/// encoder states and, for classifier-free guidance, the negative (unconditional) prompt's, each [B, tokens, D] with one
/// row per sample. The sampler borrows them; the creator disposes them (<see cref="Dispose"/> does both).
/// </summary>
/// <param name="PromptEmbeds">diffusers' <c>prompt_embeds</c>: the text encoder's last_hidden_state for each sample's prompt.</param>
/// <param name="NegativePromptEmbeds">diffusers' <c>negative_prompt_embeds</c>; needed only when the guidance scale is above 1.</param>
public sealed record PromptEmbeddings(Tensor PromptEmbeds, Tensor? NegativePromptEmbeds) : IDisposable
{
    public void Dispose()
    {
        PromptEmbeds.Dispose();
        NegativePromptEmbeds?.Dispose();
    }
}

/// <summary>
/// The denoising loop shared by every backend and feature: for each scheduler timestep, predict with the
/// model (classifier-free guidance for models with a null class, or for text-conditioned models from a negative
/// prompt's states) and step the scheduler.
/// <para>
/// In diffusers' pipelines' order: after <c>set_timesteps</c> the noise is scaled by the scheduler's
/// <c>init_noise_sigma</c>, and each step feeds the model <c>scale_model_input(latents, t)</c> while the scheduler
/// steps the unscaled latents. Both are identities for DDPM/DDIM/DPM-Solver/PNDM; the Euler schedulers need them.
/// </para>
/// </summary>
public static class DiffusionSampler
{
    /// <summary>A denoiser as a function (sample, timestep, labels) -> prediction with the sample's channels.</summary>
    public delegate Tensor Denoise(Tensor sample, Tensor timestep, Tensor? labels);

    /// <summary>A text-conditioned denoiser as a function (sample, timestep, encoder_hidden_states [B, tokens, D]) -> prediction.</summary>
    public delegate Tensor DenoiseText(Tensor sample, Tensor timestep, Tensor encoderHiddenStates);

    public static SampleResult Sample(DiffusionModel model, IDiffusionScheduler scheduler, Tensor noise, Tensor? classLabels, SampleOptions options,
        Generator? generator = null, Action<int, int>? progress = null)
    {
        if (model.NumClasses is not null && classLabels is null)
            throw new ArgumentException($"{model.ClassName} is class-conditional: give class labels.");
        using var noGrad = no_grad();
        return Sample(model.Predict, model.NullClass, scheduler, noise, classLabels, options, generator, progress);
    }

    public static SampleResult Sample(Denoise denoise, int? nullClass, IDiffusionScheduler scheduler, Tensor noise, Tensor? classLabels, SampleOptions options,
        Generator? generator = null, Action<int, int>? progress = null)
    {
        if (options.Steps < 1) throw new ArgumentException("The number of sampling steps must be at least 1.");
        if (options.GuidanceScale != 1.0 && (classLabels is null || nullClass is null))
            throw new ArgumentException("Classifier-free guidance needs a class-conditional model with a null class (e.g. a DiT) and class labels.");
        return Loop((modelInput, t) => Guided(denoise, modelInput, t, classLabels, nullClass, options.GuidanceScale),
            scheduler, noise, options, generator, progress);
    }

    /// <summary>
    /// Samples a text-conditioned model (a Stable Diffusion U-Net) as diffusers' StableDiffusionPipeline does: the
    /// same loop, each step's prediction guided by <see cref="TextGuided"/>. <paramref name="embeddings"/> has one row
    /// per sample of <paramref name="noise"/> (repeat a prompt's states for several images of it).
    /// </summary>
    public static SampleResult Sample(DenoiseText denoise, PromptEmbeddings embeddings, IDiffusionScheduler scheduler, Tensor noise, SampleOptions options,
        Generator? generator = null, Action<int, int>? progress = null)
    {
        if (options.Steps < 1) throw new ArgumentException("The number of sampling steps must be at least 1.");
        long batch = noise.shape[0];
        if (embeddings.PromptEmbeds.dim() != 3 || embeddings.PromptEmbeds.shape[0] != batch)
            throw new ArgumentException($"The prompt embeddings must be [{batch}, tokens, width], one row per sample, not [{string.Join(", ", embeddings.PromptEmbeds.shape)}].");
        if (options.GuidanceScale > 1.0)
        {
            var negative = embeddings.NegativePromptEmbeds
                ?? throw new ArgumentException($"Guidance scale {options.GuidanceScale} needs negative prompt embeddings (those of \"\" for plain classifier-free guidance).");
            if (!negative.shape.SequenceEqual(embeddings.PromptEmbeds.shape))
                throw new ArgumentException($"The negative prompt embeddings [{string.Join(", ", negative.shape)}] must have the prompt embeddings' shape " +
                    $"[{string.Join(", ", embeddings.PromptEmbeds.shape)}]; pad both prompts to the same length.");
        }
        return Loop((modelInput, t) => TextGuided(denoise, modelInput, t, embeddings, options.GuidanceScale),
            scheduler, noise, options, generator, progress);
    }

    /// <summary>
    /// The loop itself, whatever conditions the model: <paramref name="predict"/> maps (scaled model input, timestep) to
    /// the guided prediction the scheduler steps with.
    /// </summary>
    private static SampleResult Loop(Func<Tensor, Tensor, Tensor> predict, IDiffusionScheduler scheduler, Tensor noise, SampleOptions options,
        Generator? generator, Action<int, int>? progress)
    {
        scheduler.SetTimesteps(options.Steps);
        var timesteps = scheduler.Timesteps;
        var modelTimesteps = scheduler.ModelTimesteps;
        // latents = latents * scheduler.init_noise_sigma (after set_timesteps: the Euler sigmas depend on the steps)
        double initNoiseSigma = scheduler.InitNoiseSigma;
        var latents = initNoiseSigma == 1.0 ? noise : noise * initNoiseSigma;
        var trajectory = options.KeepTrajectory ? new List<Tensor>(timesteps.Length) : null;
        for (int i = 0; i < timesteps.Length; i++)
        {
            var current = latents;
            long timestep = timesteps[i];
            double modelTimestep = modelTimesteps[i];
            // Paused: TorchSharp's implicit scalars must outlive the native calls that read them (see GcPause).
            var next = GcPause.Run(() =>
            {
                using var scope = NewDisposeScope();
                // diffusers feeds the scheduler's own timestep value: an integer, or Euler's fractional linspace one (float32).
                var t = modelTimestep == timestep ? tensor(timestep, device: current.device) : tensor((float)modelTimestep, device: current.device);
                var modelInput = scheduler.ScaleModelInput(current, timestep);
                var prediction = predict(modelInput, t);
                return scheduler.Step(prediction, timestep, current, generator: generator).PrevSample.MoveToOuterDisposeScope();
            });
            if (trajectory is not null) trajectory.Add(next);
            latents = next;
            progress?.Invoke(i + 1, timesteps.Length);
        }
        Tensor? stacked = trajectory is null ? null : stack(trajectory);
        return new SampleResult(latents, stacked, timesteps);
    }

    /// <summary>eps = uncond + g (cond - uncond), computed in one batch of 2B as diffusers' DiT pipeline does.</summary>
    public static Tensor Guided(Denoise denoise, Tensor latents, Tensor t, Tensor? labels, int? nullClass, double guidanceScale)
    {
        if (guidanceScale == 1.0 || labels is null || nullClass is null)
            return denoise(latents, t, labels);
        long batch = latents.shape[0];
        var doubled = cat([latents, latents]);
        var nullLabels = full([batch], nullClass.Value, ScalarType.Int64, latents.device);
        var both = denoise(doubled, t, cat([labels.to_type(ScalarType.Int64), nullLabels]));
        var cond = both[..(int)batch];
        var uncond = both[(int)batch..];
        return uncond + (cond - uncond) * guidanceScale;
    }

    /// <summary>
    /// eps = uncond + g (cond - uncond) for a text-conditioned model, computed in one batch of 2B in Stable Diffusion's
    /// order, [negative; prompt] (the DiT's class order is the reverse). As diffusers' <c>do_classifier_free_guidance</c>,
    /// guidance runs only for g &gt; 1: with g &lt;= 1 the prompt branch alone is returned and the negative states are not used.
    /// </summary>
    public static Tensor TextGuided(DenoiseText denoise, Tensor latents, Tensor t, PromptEmbeddings embeddings, double guidanceScale)
    {
        if (guidanceScale <= 1.0)
            return denoise(latents, t, embeddings.PromptEmbeds);
        var negative = embeddings.NegativePromptEmbeds
            ?? throw new ArgumentException("Classifier-free guidance needs negative prompt embeddings.");
        var both = denoise(cat([latents, latents]), t, cat([negative, embeddings.PromptEmbeds]));
        var chunks = both.chunk(2);
        var uncond = chunks[0];
        var cond = chunks[1];
        return uncond + (cond - uncond) * guidanceScale;
    }

    /// <summary>Labels 0, 1, ..., k-1, 0, 1, ... for a grid of conditional samples.</summary>
    public static Tensor CyclicLabels(int count, int numClasses, Device? device = null) =>
        arange(count, ScalarType.Int64, device) % numClasses;
}
