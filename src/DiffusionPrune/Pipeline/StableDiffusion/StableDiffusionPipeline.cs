using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using DiffusionPrune.TextEncoding;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pipeline.StableDiffusion;

/// <summary>
/// What <see cref="StableDiffusionPipeline.Generate(PromptEmbeddings, Tensor, SampleOptions, Generator?, Action{int, int}?)"/>
/// made, all owned by the caller: the final latents (and, when asked, the latents after each step), the decoded image in
/// the VAE's range (about [-1, 1]) and the same image as diffusers' image processor hands it on, in [0, 1].
/// </summary>
public sealed record StableDiffusionOutput(Tensor Latents, Tensor? Trajectory, long[] Timesteps, Tensor Image, Tensor Image01) : IDisposable
{
    public void Dispose()
    {
        Latents.Dispose();
        Trajectory?.Dispose();
        Image.Dispose();
        Image01.Dispose();
    }
}

/// <summary>
/// diffusers' <c>StableDiffusionPipeline</c> (text to image, Stable Diffusion 1.x / 2.x) over the components this library
/// loads one by one: CLIP tokenizer and text encoder, <see cref="UNet2DConditionModel"/>, <see cref="AutoencoderKL"/> and the
/// scheduler the folder names. <see cref="Load"/> reads a pipeline folder as diffusers saves it (model_index.json and a
/// subfolder per component); <see cref="EncodePrompt(string, string?, int, bool)"/> turns prompts into text states;
/// <see cref="Generate(PromptEmbeddings, Tensor, SampleOptions, Generator?, Action{int, int}?)"/> runs the guided denoising
/// loop (the one <see cref="DiffusionSampler"/> runs for every model) and decodes the latents through the VAE.
/// <para>Not taken over from diffusers: the safety checker and its feature extractor (present ones are left unloaded,
/// with a note in <see cref="Notes"/>), IP-adapter image encoders, <c>guidance_rescale</c>, <c>clip_skip</c>, LoRA and
/// textual-inversion hooks.</para>
/// Owns its components: disposing the pipeline disposes them.
/// </summary>
public sealed class StableDiffusionPipeline : IDisposable
{
    public const string ClassName = "StableDiffusionPipeline";

    /// <summary>The component keys a StableDiffusionPipeline needs, with the classes accepted for each (diffusers' type hints).</summary>
    private static readonly (string Name, string[] Classes)[] RequiredComponents =
    [
        ("tokenizer", ["CLIPTokenizer", "CLIPTokenizerFast"]), // both save vocab.json + merges.txt, which is all ClipTokenizer reads
        ("text_encoder", [CLIPTextConfig.Architecture]),
        ("unet", [UNet2DConditionConfig.ClassName]),
        ("vae", [AutoencoderKLConfig.ClassName]),
        ("scheduler", []), // any class: Scheduler.Create says which are supported
    ];

    /// <summary>Components diffusers lets a StableDiffusionPipeline leave out; present ones are not loaded.</summary>
    private static readonly Dictionary<string, string> OptionalComponents = new(StringComparer.Ordinal)
    {
        ["safety_checker"] = "the safety checker is not run: generated images are not filtered",
        ["feature_extractor"] = "it only prepares images for the safety checker",
        ["image_encoder"] = "IP-adapter image prompts are not supported",
    };

    private StableDiffusionPipeline(string folder, ClipTokenizer tokenizer, CLIPTextModel textEncoder, UNet2DConditionModel unet,
        AutoencoderKL vae, IDiffusionScheduler scheduler, Device device, IReadOnlyList<string> notes)
    {
        Folder = folder;
        Tokenizer = tokenizer;
        TextEncoder = textEncoder;
        Unet = unet;
        Vae = vae;
        Scheduler = scheduler;
        Device = device;
        Notes = notes;
    }

    /// <summary>The pipeline folder (the one holding model_index.json).</summary>
    public string Folder { get; }
    public ClipTokenizer Tokenizer { get; }
    public CLIPTextModel TextEncoder { get; }
    public UNet2DConditionModel Unet { get; }
    public AutoencoderKL Vae { get; }

    /// <summary>The scheduler from scheduler/scheduler_config.json, or the one asked for over it when loading.</summary>
    public IDiffusionScheduler Scheduler { get; }

    /// <summary>Where the text encoder, U-Net and VAE run.</summary>
    public Device Device { get; }

    /// <summary>What loading left out and why (a present safety checker, say), one line each, for the caller to show.</summary>
    public IReadOnlyList<string> Notes { get; }

    /// <summary>diffusers' <c>vae_scale_factor</c>: how many image pixels one latent covers in each direction.</summary>
    public int VaeScaleFactor => Vae.DownsampleFactor;

    /// <summary>The image height and width diffusers defaults to: the U-Net's sample_size times <see cref="VaeScaleFactor"/>.</summary>
    public (int Height, int Width) DefaultImageSize => (Unet.SampleSize[0] * VaeScaleFactor, Unet.SampleSize[^1] * VaeScaleFactor);

    /// <summary>
    /// Whether <paramref name="path"/> is a text-to-image Stable Diffusion folder: one with model_index.json naming a
    /// Stable Diffusion pipeline class or a text encoder. Such a folder goes to <see cref="Load"/> (which refuses the
    /// variants it does not run, by name) rather than to the unconditional and class-conditional samplers.
    /// </summary>
    public static bool IsStableDiffusionFolder(string path)
    {
        if (PipelineIndex.Find(path) is null) return false;
        var index = PipelineIndex.Load(path);
        return index.ClassName?.Contains("StableDiffusion", StringComparison.Ordinal) == true || index.Present("text_encoder") is not null;
    }

    /// <summary>
    /// The checks <see cref="Load"/> makes before reading any weights: model_index.json names a StableDiffusionPipeline and
    /// each component with a class it takes, and every component has its subfolder. Cheap (reads one JSON file), for
    /// listing folders; throws what <see cref="Load"/> would, by name, and returns the notes on components left out.
    /// </summary>
    public static IReadOnlyList<string> CheckFolder(string path) => CheckIndex(PipelineIndex.Load(path));

    /// <summary>
    /// Loads a StableDiffusionPipeline folder as diffusers saves it: model_index.json must name the pipeline class and
    /// each component with the class diffusers' pipeline expects (tokenizer CLIPTokenizer, text_encoder CLIPTextModel,
    /// unet UNet2DConditionModel, vae AutoencoderKL, and a scheduler), and each component's subfolder must load strictly.
    /// A missing or wrongly-typed component is refused by name before any weights are read.
    /// </summary>
    /// <param name="path">The pipeline folder, or its model_index.json.</param>
    /// <param name="schedulerName">Another scheduler over the folder's config (ddim | pndm | euler | euler-a | dpm++2m | ddpm, or a diffusers class name), as <see cref="Schedulers.Scheduler.Create"/> takes it.</param>
    /// <param name="ddimEta">DDIM's eta (0, deterministic, is diffusers' default).</param>
    /// <param name="schedulerConfigPath">A scheduler_config.json to use instead of the folder's scheduler/ one.</param>
    /// <param name="device">Where the models run (default: the CPU).</param>
    public static StableDiffusionPipeline Load(string path, string? schedulerName = null, double ddimEta = 0.0, string? schedulerConfigPath = null, Device? device = null)
    {
        var index = PipelineIndex.Load(path);
        string folder = index.Folder;
        var notes = CheckIndex(index);
        // its weights and one guided image, from the configs and headers alone: refused before anything is allocated
        PipelineResources.Sampling(folder, 1, guided: true).EnsureFits(folder);

        string schedulerFile = schedulerConfigPath ?? Path.Combine(folder, "scheduler", ModelFolder.SchedulerConfig);
        if (schedulerConfigPath is null && !File.Exists(schedulerFile))
            throw new ModelFormatException($"'{folder}' names a scheduler in {ModelFolder.PipelineIndex} but has no scheduler/{ModelFolder.SchedulerConfig}.");
        var schedulerConfig = SchedulerConfig.Load(schedulerFile);
        // The index's class is the one diffusers builds (from_config of the file); a user's choice goes over both.
        string indexScheduler = index.Present("scheduler")!.ClassName!;
        string? schedulerOverride = schedulerName ?? (schedulerConfigPath is null && schedulerConfig.ClassName != indexScheduler ? indexScheduler : null);

        var owned = new List<IDisposable>();
        try
        {
            var scheduler = Schedulers.Scheduler.Create(schedulerConfig, schedulerOverride, ddimEta);
            owned.Add(scheduler);
            var tokenizer = ClipTokenizer.Load(Subfolder(folder, "tokenizer"));
            var textEncoder = CLIPTextModel.Load(Subfolder(folder, "text_encoder"));
            owned.Add(textEncoder);
            var unet = UNet2DConditionModel.Load(Subfolder(folder, "unet"));
            owned.Add(unet);
            var vae = AutoencoderKL.Load(Subfolder(folder, "vae"));
            owned.Add(vae);
            CheckCompatible(folder, textEncoder, unet, vae);

            var dev = device ?? CPU;
            if (dev.type != DeviceType.CPU)
            {
                textEncoder.to(dev);
                unet.to(dev);
                vae.to(dev);
            }
            return new StableDiffusionPipeline(folder, tokenizer, textEncoder, unet, vae, scheduler, dev, notes);
        }
        catch
        {
            foreach (var d in owned) d.Dispose();
            throw;
        }
    }

    /// <summary>
    /// diffusers' <c>encode_prompt</c> for one prompt: its text states and (with guidance) those of the negative prompt,
    /// "" by default, each [<paramref name="imagesPerPrompt"/>, max_length, hidden_size].
    /// </summary>
    public PromptEmbeddings EncodePrompt(string prompt, string? negativePrompt = "", int imagesPerPrompt = 1, bool classifierFreeGuidance = true) =>
        EncodePrompt([prompt], negativePrompt is null ? null : [negativePrompt], imagesPerPrompt, classifierFreeGuidance);

    /// <summary>
    /// diffusers' <c>encode_prompt</c>: each prompt tokenized to the tokenizer's model_max_length (77; longer prompts are
    /// cut, keeping the end token) and encoded to the text encoder's last_hidden_state; each prompt's states repeated for
    /// its <paramref name="imagesPerPrompt"/> images, in prompt order. With <paramref name="classifierFreeGuidance"/> the
    /// negative prompts are encoded the same way, in a call of their own as diffusers does: null means "" for every prompt,
    /// one negative prompt goes with every prompt, otherwise there must be one per prompt.
    /// </summary>
    public PromptEmbeddings EncodePrompt(IReadOnlyList<string> prompts, IReadOnlyList<string>? negativePrompts = null, int imagesPerPrompt = 1,
        bool classifierFreeGuidance = true)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        if (prompts.Count == 0) throw new ArgumentException("Give at least one prompt.", nameof(prompts));
        if (imagesPerPrompt < 1) throw new ArgumentException("The number of images per prompt must be at least 1.", nameof(imagesPerPrompt));
        string[]? negatives = null;
        if (classifierFreeGuidance)
        {
            negatives = negativePrompts switch
            {
                null or { Count: 0 } => Enumerable.Repeat("", prompts.Count).ToArray(),
                { Count: 1 } => Enumerable.Repeat(negativePrompts[0], prompts.Count).ToArray(),
                var list when list.Count == prompts.Count => list.ToArray(),
                var list => throw new ArgumentException($"{list.Count} negative prompts for {prompts.Count} prompts: give one negative prompt, or one per prompt."),
            };
        }
        var prompt = Repeat(EncodeText(prompts), imagesPerPrompt);
        try
        {
            var negative = negatives is null ? null : Repeat(EncodeText(negatives), imagesPerPrompt);
            return new PromptEmbeddings(prompt, negative);
        }
        catch
        {
            prompt.Dispose();
            throw;
        }
    }

    /// <summary>The tokenizer's input_ids for <paramref name="texts"/>, [N, model_max_length] int64, as the pipeline feeds the text encoder.</summary>
    public Tensor TokenIds(IReadOnlyList<string> texts) => TokenIds(Tokenizer, texts);

    private static Tensor TokenIds(ClipTokenizer tokenizer, IReadOnlyList<string> texts)
    {
        int length = tokenizer.ModelMaxLength;
        var ids = new long[texts.Count * length];
        for (int i = 0; i < texts.Count; i++)
            tokenizer.EncodeForModel(texts[i] ?? throw new ArgumentException("A prompt is null.", nameof(texts)), length).InputIds.CopyTo(ids, i * length);
        return tensor(ids, [texts.Count, length], ScalarType.Int64);
    }

    /// <summary>
    /// <see cref="EncodePrompt(IReadOnlyList{string}, IReadOnlyList{string}?, int, bool)"/> with one image per prompt and
    /// the empty negative prompt, from a pipeline folder's tokenizer and text encoder alone: what pruning the folder's
    /// U-Net calibrates on, without loading a second U-Net and the VAE beside the one being pruned. The text encoder is
    /// freed before this returns.
    /// </summary>
    public static PromptEmbeddings EncodePromptsOf(string path, IReadOnlyList<string> prompts, bool classifierFreeGuidance, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        if (prompts.Count == 0) throw new ArgumentException("Give at least one prompt.", nameof(prompts));
        var index = PipelineIndex.Load(path);
        CheckIndex(index);
        var tokenizer = ClipTokenizer.Load(Subfolder(index.Folder, "tokenizer"));
        using var textEncoder = CLIPTextModel.Load(Subfolder(index.Folder, "text_encoder"));
        var dev = device ?? CPU;
        if (dev.type != DeviceType.CPU) textEncoder.to(dev);
        Tensor Encode(IReadOnlyList<string> texts)
        {
            using var ids = TokenIds(tokenizer, texts);
            using var noGrad = no_grad();
            return GcPause.Run(() =>
            {
                using var scope = NewDisposeScope();
                return textEncoder.call(ids.to(dev)).MoveToOuterDisposeScope();
            });
        }
        var prompt = Encode(prompts);
        try
        {
            return new PromptEmbeddings(prompt, classifierFreeGuidance ? Encode(Enumerable.Repeat("", prompts.Count).ToArray()) : null);
        }
        catch
        {
            prompt.Dispose();
            throw;
        }
    }

    /// <summary>The text encoder's last_hidden_state [N, model_max_length, hidden_size] for <paramref name="texts"/>, on <see cref="Device"/>.</summary>
    public Tensor EncodeText(IReadOnlyList<string> texts)
    {
        using var ids = TokenIds(texts);
        return EncodeIds(ids);
    }

    /// <summary>The text encoder's last_hidden_state for ready-made input_ids [N, S] (no gradients).</summary>
    public Tensor EncodeIds(Tensor inputIds)
    {
        using var noGrad = no_grad();
        return GcPause.Run(() =>
        {
            using var scope = NewDisposeScope();
            return TextEncoder.call(inputIds.to(Device)).MoveToOuterDisposeScope();
        });
    }

    /// <summary>
    /// diffusers' <c>prepare_latents</c> without the scaling: unit Gaussian noise [count, unet in_channels, height / f,
    /// width / f] from <paramref name="generator"/> (f = <see cref="VaeScaleFactor"/>; height and width default to
    /// <see cref="DefaultImageSize"/>). Drawn where the generator lives; the loop multiplies it by init_noise_sigma.
    /// </summary>
    public Tensor DrawNoise(int count, Generator generator, int? height = null, int? width = null)
    {
        if (count < 1) throw new ArgumentException("The number of images must be at least 1.", nameof(count));
        var (defaultHeight, defaultWidth) = DefaultImageSize;
        int h = height ?? defaultHeight, w = width ?? defaultWidth;
        int f = VaeScaleFactor, multiple = f << Unet.NumUpsamplers;
        if (h < 1 || w < 1 || h % multiple != 0 || w % multiple != 0)
            throw new ArgumentException($"Image height and width must be positive multiples of {multiple} for this pipeline (the VAE scales by {f}, " +
                $"the U-Net halves {Unet.NumUpsamplers} times), not {h} x {w}.");
        return randn([count, Unet.InChannels, h / f, w / f], generator: generator);
    }

    /// <summary>
    /// StableDiffusionPipeline's denoising loop and decoding, in diffusers' order: latents = noise * init_noise_sigma; per
    /// timestep, the U-Net predicts on scale_model_input of [latents; latents] with [negative; prompt] text states, the
    /// guided prediction uncond + g (cond - uncond) is stepped by the scheduler (with g &lt;= 1 only the prompt branch
    /// runs); then image = vae.decode(latents / scaling_factor), image01 = clamp(image / 2 + 0.5, 0, 1).
    /// </summary>
    /// <param name="embeddings">Text states with one row per sample of <paramref name="noise"/> (see <see cref="EncodePrompt(IReadOnlyList{string}, IReadOnlyList{string}?, int, bool)"/>).</param>
    /// <param name="noise">Unit Gaussian latents [B, unet in_channels, h, w] (see <see cref="DrawNoise"/>).</param>
    /// <param name="generator">Draws the noise of stochastic steps (Euler ancestral, DDIM with eta &gt; 0).</param>
    /// <param name="progress">Called after each step with (done, total).</param>
    public StableDiffusionOutput Generate(PromptEmbeddings embeddings, Tensor noise, SampleOptions options, Generator? generator = null,
        Action<int, int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(embeddings);
        ArgumentNullException.ThrowIfNull(options);
        if (noise.dim() != 4 || noise.shape[1] != Unet.InChannels)
            throw new ArgumentException($"The noise must be latents [batch, {Unet.InChannels}, height, width], not [{string.Join(", ", noise.shape)}].", nameof(noise));
        int multiple = 1 << Unet.NumUpsamplers;
        if (noise.shape[2] % multiple != 0 || noise.shape[3] % multiple != 0)
            throw new ArgumentException($"Latent height and width must be multiples of {multiple} for this U-Net, not {noise.shape[2]} x {noise.shape[3]}.", nameof(noise));
        using var noGrad = no_grad();
        // Copies on the pipeline's device, when the inputs are elsewhere; the caller's own tensors are never disposed here.
        var moved = new List<Tensor>();
        Tensor OnDevice(Tensor x)
        {
            var y = x.to(Device);
            if (!ReferenceEquals(x, y)) moved.Add(y);
            return y;
        }
        SampleResult result;
        try
        {
            var text = new PromptEmbeddings(OnDevice(embeddings.PromptEmbeds),
                embeddings.NegativePromptEmbeds is { } negative ? OnDevice(negative) : null);
            result = DiffusionSampler.Sample(
                (sample, t, states) => Unet.Predict(sample, new Conditioning(t, EncoderHiddenStates: states)),
                text, Scheduler, OnDevice(noise), options, generator, progress);
        }
        finally
        {
            foreach (var x in moved) x.Dispose();
        }
        try
        {
            var image = Decode(result.Final);
            var image01 = GcPause.Run(() => Postprocess(image));
            return new StableDiffusionOutput(result.Final, result.Trajectory, result.Timesteps, image, image01);
        }
        catch
        {
            result.Final.Dispose();
            result.Trajectory?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Text to image from prompt strings: encodes <paramref name="prompt"/> (and the negative prompt when the guidance scale
    /// is above 1), draws <paramref name="count"/> latents from <paramref name="seed"/> and runs
    /// <see cref="Generate(PromptEmbeddings, Tensor, SampleOptions, Generator?, Action{int, int}?)"/>. Seeds as
    /// <c>dprune sample</c> does for every model: the noise is drawn on the CPU (the same seed gives the same noise on every
    /// device) and stochastic steps draw from a second generator seeded from it.
    /// </summary>
    public StableDiffusionOutput Generate(string prompt, string? negativePrompt, int count, long seed, SampleOptions options,
        int? height = null, int? width = null, Action<int, int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(options);
        using var noise = DrawNoise(count, new Generator((ulong)seed, CPU), height, width);
        using var embeddings = EncodePrompt(prompt, negativePrompt ?? "", count, classifierFreeGuidance: options.GuidanceScale > 1.0);
        return Generate(embeddings, noise, options, new Generator((ulong)seed + 0x5EED, Device), progress);
    }

    /// <summary>
    /// Latents to an image, as the pipeline's end does: vae.decode(latents / scaling_factor), with the VAE's shift_factor
    /// added back after the division for the VAEs that have one (null for Stable Diffusion 1.x / 2.x).
    /// </summary>
    public Tensor Decode(Tensor latents)
    {
        using var noGrad = no_grad();
        return GcPause.Run(() =>
        {
            using var scope = NewDisposeScope();
            var scaled = latents.to(Device) / Vae.ScalingFactor;
            if (Vae.ShiftFactor is double shift) scaled = scaled + shift;
            return Vae.Decode(scaled).MoveToOuterDisposeScope();
        });
    }

    /// <summary>diffusers' image processor's denormalize: an image in [-1, 1] to [0, 1], clamp(image / 2 + 0.5, 0, 1).</summary>
    public static Tensor Postprocess(Tensor image) => (image / 2 + 0.5).clamp(0, 1);

    public void Dispose()
    {
        TextEncoder.Dispose();
        Unet.Dispose();
        Vae.Dispose();
        Scheduler.Dispose();
    }

    /// <summary>Refuses an index that is not a StableDiffusionPipeline's, naming what is wrong; returns the notes on ignored components.</summary>
    private static List<string> CheckIndex(PipelineIndex index)
    {
        string file = Path.Combine(index.Folder, ModelFolder.PipelineIndex);
        if (index.ClassName != ClassName)
            throw new NotSupportedException(index.ClassName is null
                ? $"{file} has no \"_class_name\"; a Stable Diffusion pipeline folder says \"_class_name\": \"{ClassName}\"."
                : $"{file} describes a {index.ClassName}; only {ClassName} folders (Stable Diffusion 1.x / 2.x text to image) are supported.");

        foreach (var (name, classes) in RequiredComponents)
        {
            var component = index.Present(name)
                ?? throw new ModelFormatException($"{file} lists no \"{name}\" component; a {ClassName} needs {DescribeRequired()}.");
            if (component.ClassName is null)
                throw new ModelFormatException($"{file}: component \"{name}\" names no class.");
            if (classes.Length > 0 && !classes.Contains(component.ClassName, StringComparer.Ordinal))
                throw new NotSupportedException($"{file}: \"{name}\" is a {component.ClassName}; a {ClassName} here takes {string.Join(" or ", classes)}.");
            if (!Directory.Exists(Path.Combine(index.Folder, name)))
                throw new ModelFormatException($"'{index.Folder}' names a {component.ClassName} \"{name}\" in {ModelFolder.PipelineIndex} but has no {name}/ subfolder.");
        }

        var notes = new List<string>();
        foreach (var component in index.Components.Values)
        {
            if (component.IsAbsent || RequiredComponents.Any(r => r.Name == component.Name)) continue;
            notes.Add(OptionalComponents.TryGetValue(component.Name, out var why)
                ? $"{component.Name} ({component.ClassName}) is not loaded: {why}."
                : $"{component.Name} ({component.ClassName}) is not part of a {ClassName} and is not loaded.");
        }
        return notes;
    }

    /// <summary>Refuses components that load on their own but cannot work together, before anything runs.</summary>
    private static void CheckCompatible(string folder, CLIPTextModel textEncoder, UNet2DConditionModel unet, AutoencoderKL vae)
    {
        var u = unet.Config;
        int width = textEncoder.Config.HiddenSize;
        if (u.CrossAttentionDim.Any(d => d != width))
            throw new ModelFormatException($"'{folder}': the unet's cross_attention_dim ({string.Join(", ", u.CrossAttentionDim.Distinct())}) differs from the " +
                $"text encoder's hidden_size ({width}); the U-Net cannot attend to these text states.");
        if (u.InChannels != vae.Config.LatentChannels || u.OutChannels != u.InChannels)
            throw new ModelFormatException($"'{folder}': the unet takes {u.InChannels} and predicts {u.OutChannels} channels, the vae's latents have " +
                $"{vae.Config.LatentChannels}; a {ClassName} needs all three equal.");
        if (u.ClassEmbedType is not null || u.NumClassEmbeds is not null || u.AdditionEmbedType is not null)
            throw new NotSupportedException($"'{folder}': this unet takes class labels or added conditions (class_embed_type, num_class_embeds, " +
                $"addition_embed_type), which a {ClassName} does not give it; it belongs to another pipeline (upscaling, unCLIP, SDXL).");
    }

    private static string Subfolder(string folder, string name) => Path.Combine(folder, name);

    /// <summary>Each state row repeated for its images, prompt by prompt (diffusers' repeat + view for num_images_per_prompt).</summary>
    private static Tensor Repeat(Tensor states, int times)
    {
        if (times == 1) return states;
        using (states) return states.repeat_interleave(times, 0);
    }

    private static string DescribeRequired() =>
        string.Join(", ", RequiredComponents.Select(r => r.Classes.Length == 0 ? $"\"{r.Name}\"" : $"\"{r.Name}\" ({r.Classes[0]})"));
}
