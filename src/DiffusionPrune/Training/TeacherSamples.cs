using System.Globalization;
using System.Text.Json.Nodes;
using DiffusionPrune.Data;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Training;

/// <summary>
/// The data of a data-free distillation of a Stable Diffusion U-Net: latents the teacher generated from prompts, each
/// labelled with the index of its prompt, and the prompts' text states (the empty prompt's last) that the labels index.
/// <para>Why teacher samples rather than Gaussian latents at random timesteps: the U-Net is only ever asked about x_t
/// drawn from q(x_t | x0) for x0 near its data, and pure noise is such an x_t only at large t; at small t Gaussian inputs
/// are far from anything it meets when sampling, so matching the teacher there spends the student's capacity off the
/// manifold. Sampling x0 from the teacher itself (its own DDIM with classifier-free guidance on the prompt) and noising
/// it with the forward process at a random t gives in-distribution x_t at every t, as training on real latents would,
/// with the teacher's samples standing in for the data. It also makes the task loss meaningful again: with x0 from the
/// teacher, ||eps_s - eps||^2 is denoising on the teacher's distribution, so every <c>--kd</c> form (none included: plain
/// fine-tuning on teacher samples) keeps its meaning.</para>
/// The pool is generated once, before the first step, deterministically from the seed (so <c>--resume</c> regenerates
/// the same pool); it costs <c>prompts x samples x steps</c> guided teacher forwards, small beside the distillation's own.
/// </summary>
public sealed class TeacherSamples : IImageDataset, IDisposable
{
    private readonly Tensor _latents; // [P * S, C, h, w]
    private readonly int _samplesPerPrompt;

    private TeacherSamples(Tensor latents, Tensor textStates, IReadOnlyList<string> prompts, int samplesPerPrompt, int steps, double guidance)
    {
        _latents = latents;
        TextStates = textStates;
        Prompts = prompts;
        _samplesPerPrompt = samplesPerPrompt;
        Steps = steps;
        GuidanceScale = guidance;
    }

    /// <summary>The prompts' encoder states [P + 1, tokens, D]; row P is the empty prompt's (see <see cref="DiffusionTrainer.TextStates"/>).</summary>
    public Tensor TextStates { get; }
    public IReadOnlyList<string> Prompts { get; }
    public int Steps { get; }
    public double GuidanceScale { get; }

    public string Name => string.Create(CultureInfo.InvariantCulture,
        $"teacher samples ({Prompts.Count} prompts x {_samplesPerPrompt}, DDIM {Steps} steps, guidance {GuidanceScale})");
    public int Count => (int)_latents.shape[0];
    public int Channels => (int)_latents.shape[1];
    public int Height => (int)_latents.shape[2];
    public int Width => (int)_latents.shape[3];

    /// <summary>Null: the labels index prompts, not classes (a class-conditional check must not read them as classes).</summary>
    public int? NumClasses => null;

    /// <summary>The teacher's latents (U-Net space, already times the VAE's scaling factor; not in [-1, 1] like images).</summary>
    public Tensor Images(ReadOnlySpan<int> indices) => _latents.index_select(0, tensor(indices.ToArray().Select(i => (long)i).ToArray()));

    /// <summary>Each latent's prompt index (a row of <see cref="TextStates"/>).</summary>
    public Tensor Labels(ReadOnlySpan<int> indices) => tensor(indices.ToArray().Select(i => (long)(i / _samplesPerPrompt)).ToArray());

    /// <summary>The recipe's record of the data: prompts, samples per prompt, the sampler.</summary>
    public JsonObject ToJson(bool builtInPrompts) => new()
    {
        ["kind"] = "teacher_samples",
        ["prompts"] = new JsonArray(Prompts.Select(p => (JsonNode?)p).ToArray()),
        ["prompt_source"] = builtInPrompts ? "built-in" : "request",
        ["samples_per_prompt"] = _samplesPerPrompt,
        ["sampler"] = "ddim",
        ["sampler_steps"] = Steps,
        ["guidance_scale"] = GuidanceScale,
    };

    /// <summary>
    /// Samples <paramref name="samplesPerPrompt"/> latents per prompt from <paramref name="teacher"/> (deterministic DDIM over
    /// the pipeline's scheduler config, guided against the empty prompt), from noise drawn on the CPU from <paramref name="seed"/>.
    /// </summary>
    /// <param name="prompt">The prompts' states [P, tokens, D] and the empty prompt's (any row count, row 0 used); borrowed.</param>
    public static TeacherSamples Generate(DiffusionModel teacher, PromptEmbeddings prompt, IReadOnlyList<string> prompts, SchedulerConfig schedulerConfig,
        int samplesPerPrompt, int steps, double guidanceScale, long seed, Action<string>? log = null, CancellationToken cancel = default)
    {
        if (samplesPerPrompt < 1) throw new ArgumentException("--teacher-samples must be at least 1 (latents per prompt).");
        if (steps < 1) throw new ArgumentException("--teacher-steps must be at least 1 (DDIM steps per teacher sample).");
        if (!double.IsFinite(guidanceScale) || guidanceScale < 1) throw new ArgumentException($"--teacher-guidance must be at least 1, not {guidanceScale}.");
        var empty = prompt.NegativePromptEmbeds ?? throw new ArgumentException("The empty prompt's states are needed (encode with classifier-free guidance).");
        var device = teacher.parameters().First().device;
        int size0 = teacher.SampleSize[0], size1 = teacher.SampleSize[^1];
        var noiseGenerator = new Generator((ulong)(seed * 1_000_003L + 0x7EAC4E5), CPU);
        using var scheduler = Schedulers.Scheduler.Create(schedulerConfig, "ddim");
        var latents = new List<Tensor>();
        bool wasTraining = teacher.training;
        teacher.eval();
        try
        {
            for (int p = 0; p < prompts.Count; p++)
            {
                cancel.ThrowIfCancellationRequested();
                log?.Invoke($"teacher samples for prompt {p + 1}/{prompts.Count}: \"{prompts[p]}\"");
                var noise = randn([samplesPerPrompt, teacher.InChannels, size0, size1], generator: noiseGenerator);
                latents.Add(GcPause.Run(() =>
                {
                    using var scope = NewDisposeScope();
                    using var noGrad = no_grad();
                    var states = new PromptEmbeddings(prompt.PromptEmbeds[p].unsqueeze(0).expand(samplesPerPrompt, -1, -1).to(device),
                        empty[0].unsqueeze(0).expand(samplesPerPrompt, -1, -1).to(device));
                    var result = DiffusionSampler.Sample((s, t, h) => teacher.Predict(s, new Conditioning(t, EncoderHiddenStates: h)),
                        states, scheduler, noise.to(device), new SampleOptions(steps, guidanceScale));
                    return result.Final.cpu().MoveToOuterDisposeScope();
                }));
                noise.Dispose();
            }
            var pool = cat(latents, 0);
            Runtime.NonFiniteCheck.Loss("distill", 0, pool.abs().max().item<float>(), "teacher sample");
            var text = cat([prompt.PromptEmbeds.cpu(), empty[0].unsqueeze(0).cpu()], 0);
            return new TeacherSamples(pool, text, prompts.ToArray(), samplesPerPrompt, steps, guidanceScale);
        }
        finally
        {
            foreach (var l in latents) l.Dispose();
            teacher.train(wasTraining);
        }
    }

    public void Dispose()
    {
        _latents.Dispose();
        TextStates.Dispose();
    }
}
