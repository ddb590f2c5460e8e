// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL and Microsoft.ML.OnnxRuntime here.
namespace DiffusionPrune.Inference.Onnx;

/// <summary>
/// The denoising loop with classifier-free guidance on float arrays, for runtimes without TorchSharp. Its twin is
/// Inference/DiffusionSampler.cs (same order of operations; ArrayDiffusionSamplerTests runs both on one ONNX graph).
/// </summary>
public static class ArrayDiffusionSampler
{
    /// <summary>A denoiser on arrays: (sample [B, C, H, W], its shape, timesteps (1 or B), labels (B) or null) -> prediction, the sample's size.</summary>
    public delegate float[] Denoise(float[] sample, int[] shape, long[] timesteps, long[]? classLabels);

    /// <summary>Runs DDIM from <paramref name="noise"/> ([B, C, H, W] of shape <paramref name="shape"/>) and returns x_0.</summary>
    /// <param name="varianceNoise">Standard normal noise the sample's size for each step; needed when the scheduler's eta > 0.</param>
    /// <param name="progress">Called after each step with (step, steps).</param>
    public static float[] Sample(Denoise denoise, int? nullClass, ArrayDDIMScheduler scheduler, float[] noise, int[] shape, long[]? classLabels,
        int steps, double guidanceScale = 1.0, Func<float[]>? varianceNoise = null, Action<int, int>? progress = null)
    {
        if (steps < 1) throw new ArgumentException("The number of sampling steps must be at least 1.");
        if (guidanceScale != 1.0 && (classLabels is null || nullClass is null))
            throw new ArgumentException("Classifier-free guidance needs a class-conditional model with a null class (e.g. a DiT) and class labels.");
        if (scheduler.Eta > 0 && varianceNoise is null)
            throw new ArgumentException("A DDIM scheduler with eta > 0 needs variance noise for every step.", nameof(varianceNoise));
        scheduler.SetTimesteps(steps);
        var timesteps = scheduler.Timesteps;
        var latents = noise;
        for (int i = 0; i < timesteps.Length; i++)
        {
            var prediction = Guided(denoise, latents, shape, timesteps[i], classLabels, nullClass, guidanceScale);
            latents = scheduler.Step(prediction, timesteps[i], latents, scheduler.Eta > 0 ? varianceNoise!() : null);
            progress?.Invoke(i + 1, timesteps.Length);
        }
        return latents;
    }

    /// <summary>eps = uncond + g (cond − uncond), in one batch of 2B (conditional first, then the null class).</summary>
    public static float[] Guided(Denoise denoise, float[] latents, int[] shape, long timestep, long[]? classLabels, int? nullClass, double guidanceScale)
    {
        if (guidanceScale == 1.0 || classLabels is null || nullClass is null)
            return denoise(latents, shape, [timestep], classLabels);
        int batch = shape[0];
        if (classLabels.Length != batch)
            throw new ArgumentException($"Got {classLabels.Length} class labels for a batch of {batch}.", nameof(classLabels));
        float[] doubled = [.. latents, .. latents];
        long[] labels = [.. classLabels, .. Enumerable.Repeat((long)nullClass.Value, batch)];
        var both = denoise(doubled, [2 * batch, shape[1], shape[2], shape[3]], [timestep], labels);
        int half = latents.Length;
        float scale = (float)guidanceScale;
        var guided = new float[half];
        for (int i = 0; i < half; i++)
        {
            float cond = both[i], uncond = both[half + i];
            guided[i] = uncond + (cond - uncond) * scale;
        }
        return guided;
    }

    /// <summary>A text-conditioned denoiser on arrays: (sample [B, C, H, W], its shape, one timestep, text states [B, T, D], their shape) -> prediction, the sample's size.</summary>
    public delegate float[] DenoiseText(float[] sample, int[] shape, long timestep, float[] states, int[] statesShape);

    /// <summary>
    /// Runs DDIM from <paramref name="noise"/> for a text-conditioned model (a Stable Diffusion U-Net) and returns the final
    /// latents: the twin of Inference/DiffusionSampler.cs's text overload, each step guided by <see cref="TextGuided"/>.
    /// <paramref name="promptStates"/> (and <paramref name="negativeStates"/>, needed when the guidance scale is above 1) are
    /// [B, T, D] of shape <paramref name="statesShape"/>, one row per sample.
    /// </summary>
    public static float[] SampleText(DenoiseText denoise, float[] promptStates, float[]? negativeStates, int[] statesShape, ArrayDDIMScheduler scheduler,
        float[] noise, int[] shape, int steps, double guidanceScale, Action<int, int>? progress = null)
    {
        if (steps < 1) throw new ArgumentException("The number of sampling steps must be at least 1.");
        if (statesShape.Length != 3 || statesShape[0] != shape[0] || promptStates.Length != statesShape[0] * statesShape[1] * statesShape[2])
            throw new ArgumentException($"The prompt states must be [{shape[0]}, tokens, width], one row per sample, not [{string.Join(", ", statesShape)}] ({promptStates.Length} values).");
        if (guidanceScale > 1.0 && negativeStates?.Length != promptStates.Length)
            throw new ArgumentException($"Guidance scale {guidanceScale} needs negative prompt states of the prompt states' shape (those of \"\" for plain classifier-free guidance).");
        if (scheduler.Eta > 0)
            throw new ArgumentException("This loop runs deterministic DDIM (eta 0) only.", nameof(scheduler));
        scheduler.SetTimesteps(steps);
        var timesteps = scheduler.Timesteps;
        var latents = noise; // DDIM's init_noise_sigma is 1 and its scale_model_input the identity
        for (int i = 0; i < timesteps.Length; i++)
        {
            var prediction = TextGuided(denoise, latents, shape, timesteps[i], promptStates, negativeStates, statesShape, guidanceScale);
            latents = scheduler.Step(prediction, timesteps[i], latents);
            progress?.Invoke(i + 1, timesteps.Length);
        }
        return latents;
    }

    /// <summary>
    /// eps = uncond + g (cond − uncond) in one batch of 2B in Stable Diffusion's order, [negative; prompt] (the class order of
    /// <see cref="Guided"/> is the reverse). As diffusers' <c>do_classifier_free_guidance</c>, guidance runs only for g &gt; 1:
    /// otherwise the prompt branch alone is returned and the negative states are not used.
    /// </summary>
    public static float[] TextGuided(DenoiseText denoise, float[] latents, int[] shape, long timestep, float[] promptStates, float[]? negativeStates,
        int[] statesShape, double guidanceScale)
    {
        if (guidanceScale <= 1.0)
            return denoise(latents, shape, timestep, promptStates, statesShape);
        var negative = negativeStates ?? throw new ArgumentException("Classifier-free guidance needs negative prompt states.", nameof(negativeStates));
        float[] doubled = [.. latents, .. latents];
        float[] states = [.. negative, .. promptStates];
        var both = denoise(doubled, [2 * shape[0], shape[1], shape[2], shape[3]], timestep, states, [2 * statesShape[0], statesShape[1], statesShape[2]]);
        int half = latents.Length;
        float scale = (float)guidanceScale;
        var guided = new float[half];
        for (int i = 0; i < half; i++)
        {
            float uncond = both[i], cond = both[half + i];
            guided[i] = uncond + (cond - uncond) * scale;
        }
        return guided;
    }

    /// <summary>Labels 0, 1, ..., k−1, 0, 1, ... for a grid of conditional samples.</summary>
    public static long[] CyclicLabels(int count, int numClasses) =>
        Enumerable.Range(0, count).Select(i => (long)(i % numClasses)).ToArray();

    /// <summary>
    /// Standard normal values from a seed (Box–Muller over <see cref="Random"/>). Reproducible for a seed on every
    /// platform, but not the noise TorchSharp's <c>randn</c> draws for the same seed.
    /// </summary>
    public static float[] GaussianNoise(int count, int seed)
    {
        var random = new Random(seed);
        var values = new float[count];
        for (int i = 0; i < count; i += 2)
        {
            double u1 = 1.0 - random.NextDouble(), u2 = random.NextDouble();
            double radius = Math.Sqrt(-2.0 * Math.Log(u1));
            values[i] = (float)(radius * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < count) values[i + 1] = (float)(radius * Math.Sin(2 * Math.PI * u2));
        }
        return values;
    }
}
