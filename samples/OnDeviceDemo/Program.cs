using System.Diagnostics;
using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using OnDeviceDemo;

// OnDeviceDemo BUNDLE [--count N] [--steps S] [--seed N] [--provider auto|cpu|directml|cuda] [--guidance G] [--batch B] [--output grid.png]
// OnDeviceDemo ONNX_PIPELINE --prompt TEXT [--negative-prompt TEXT] [--guidance-scale G] [--steps S] [--seed N] [--count N] [--output image.png]
// Samples images from a `dprune export` bundle (or exported Stable Diffusion pipeline) with DDIM on ONNX Runtime and writes them as one PNG grid.
try
{
    var options = DemoOptions.Parse(args);
    if (options is null)
    {
        Console.WriteLine(DemoOptions.Usage);
        return 0;
    }
    // a folder with model_index.json is a pipeline: ours when it names the ONNX pipeline class; anything else is a bundle folder (or not one)
    string? pipelineClass = OnnxPipelineLayout.IndexClassName(options.Bundle);
    if (pipelineClass == OnnxPipelineLayout.ClassName) return RunPipeline(options);
    if (File.Exists(Path.Combine(options.Bundle, ModelFolder.PipelineIndex)))
        throw new ArgumentException($"'{options.Bundle}' is a diffusers {pipelineClass ?? "pipeline"} folder, not an exported ONNX pipeline. Export it first with " +
            $"dprune export --model {options.Bundle} --output DIR, then pass DIR.");
    options.RefusePipelineOptions();
    return Run(options);
}
catch (Exception e) when (e is ArgumentException or FileNotFoundException or DirectoryNotFoundException or InvalidDataException or NotSupportedException or ModelFormatException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}

static int Run(DemoOptions options)
{
    // 1. the model, on the provider asked for (or the CPU, with a note saying why)
    using var session = OnnxDenoiserSession.Open(options.Bundle, options.Provider, Console.WriteLine);
    var model = session.Model;
    string schedulerPath = OnnxBundle.FindSchedulerConfig(options.Bundle)
        ?? throw new FileNotFoundException($"'{options.Bundle}' has no {ModelFolder.SchedulerConfig}; it is not a complete bundle. Export the model again.");
    var scheduler = ArrayDDIMScheduler.FromFile(schedulerPath);
    if (model.InChannels is not (1 or 3))
        throw new NotSupportedException($"The model makes {model.InChannels}-channel samples (latents), which cannot be written as a PNG.");
    int count = options.Count ?? 16;
    double guidance = options.Guidance ?? 1.0;
    string output = options.Output ?? "grid.png";
    if (guidance != 1.0 && model.NullClass is null)
        throw new ArgumentException("--guidance needs a class-conditional model with a null class; this one has none. Drop --guidance.");

    // 2. all the noise from one seed, so the images do not depend on --batch
    int c = model.InChannels, h = model.SampleSize[0], w = model.SampleSize[1], perImage = c * h * w;
    var noise = ArrayDiffusionSampler.GaussianNoise(count * perImage, options.Seed);
    long[]? labels = model.NumClasses is int classes ? ArrayDiffusionSampler.CyclicLabels(count, classes) : null;

    // 3. DDIM, one batch at a time, timing each
    var images = new float[count * perImage];
    var millisecondsPerImage = new List<double>();
    for (int start = 0; start < count; start += options.Batch)
    {
        int n = Math.Min(options.Batch, count - start);
        var batchNoise = noise.AsSpan(start * perImage, n * perImage).ToArray();
        var batchLabels = labels?[start..(start + n)];
        var watch = Stopwatch.StartNew();
        var result = ArrayDiffusionSampler.Sample(session.Predict, model.NullClass, scheduler, batchNoise, [n, c, h, w], batchLabels,
            options.Steps, guidance);
        double perImageMs = watch.Elapsed.TotalMilliseconds / n;
        millisecondsPerImage.Add(perImageMs);
        result.CopyTo(images, start * perImage);
        PrintBatch(start, n, count, perImageMs, options.Steps);
    }

    // 4. the grid
    PixelGrid.Save(output, images, [count, c, h, w], scale: 2);
    PrintSummary(session.Provider, millisecondsPerImage, output);
    return 0;
}

static int RunPipeline(DemoOptions options)
{
    string output = options.Output ?? "image.png";
    bool png = output.EndsWith(".png", StringComparison.OrdinalIgnoreCase);
    if (!png && !output.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        throw new ArgumentException($"--output '{output}' must end in .png (the images) or .safetensors (latents and decoded images as float32).");
    double guidance = options.Guidance ?? 7.5;

    // 1. tokenizer, the three graphs (on the provider asked for, or the CPU with a note saying why) and DDIM
    using var pipeline = OnnxStableDiffusionSession.Open(options.Bundle, options.Provider, options.Scheduler, Console.WriteLine);

    // 2. the initial latents: the --noise file's, or Gaussian noise from the seed (all at once, so the images do not depend on --batch)
    float[] noise;
    int[] shape;
    if (options.Noise is not null)
    {
        (noise, shape) = FloatSafetensors.ReadFloat(options.Noise);
        if (shape.Length != 4 || shape[1] != pipeline.LatentChannels)
            throw new ArgumentException($"--noise '{options.Noise}' holds [{string.Join(", ", shape)}]; this pipeline's U-Net needs latents [B, {pipeline.LatentChannels}, h, w].");
        if (options.Count is int asked && asked != shape[0])
            throw new ArgumentException($"--count {asked} disagrees with the {shape[0]} latents of --noise; drop --count.");
    }
    else
    {
        int[] size = pipeline.SampleSize ?? throw new ArgumentException($"'{options.Bundle}': unet/config.json has no sample_size, so the latent size is unknown.");
        shape = [options.Count ?? 1, pipeline.LatentChannels, size[0], size[1]];
        noise = ArrayDiffusionSampler.GaussianNoise(shape[0] * shape[1] * shape[2] * shape[3], options.Seed);
    }
    int count = shape[0], perLatent = shape[1] * shape[2] * shape[3];
    Console.WriteLine($"prompt \"{options.Prompt}\"" + (guidance > 1.0 ? $", negative prompt \"{options.NegativePrompt}\", guidance scale {guidance}" : $", guidance scale {guidance} (no guidance)") +
        $", DDIM {options.Steps} steps, latents [{string.Join(", ", shape)}]");

    // 3. prompt to image, one batch at a time, timing each
    var latents = new float[noise.Length];
    float[]? images = null;
    int[]? imageShape = null;
    var millisecondsPerImage = new List<double>();
    long[] timesteps = [];
    for (int start = 0; start < count; start += options.Batch)
    {
        int n = Math.Min(options.Batch, count - start);
        var batchNoise = noise.AsSpan(start * perLatent, n * perLatent).ToArray();
        var watch = Stopwatch.StartNew();
        var result = pipeline.Generate(options.Prompt, options.NegativePrompt, batchNoise, [n, shape[1], shape[2], shape[3]], options.Steps, guidance);
        double perImageMs = watch.Elapsed.TotalMilliseconds / n;
        millisecondsPerImage.Add(perImageMs);
        if (result.Image.Any(v => !float.IsFinite(v)))
            throw new InvalidDataException($"The decoded image holds a NaN or infinity; the pipeline's graphs are broken. Re-export the pipeline with dprune export.");
        int perImage = result.ImageShape[1] * result.ImageShape[2] * result.ImageShape[3];
        images ??= new float[count * perImage];
        imageShape ??= [count, result.ImageShape[1], result.ImageShape[2], result.ImageShape[3]];
        result.Latents.CopyTo(latents, start * perLatent);
        result.Image.CopyTo(images, start * perImage);
        timesteps = result.Timesteps;
        PrintBatch(start, n, count, perImageMs, options.Steps);
    }

    // 4. the images: a PNG (one image as it is, several tiled with grey gaps, as dprune sample does), or float32 tensors
    if (png)
        PixelGrid.Save(output, images!, imageShape!, padding: count == 1 ? 0 : 2);
    else
        FloatSafetensors.Write(output, [new("final", latents, shape), new("image", images!, imageShape!), new("timesteps", timesteps, [timesteps.Length])]);
    PrintSummary(pipeline.Provider, millisecondsPerImage, output);
    return 0;
}

static void PrintBatch(int start, int n, int count, double perImageMs, int steps)
{
    string which = n == 1 ? $"image {start + 1}" : $"images {start + 1}-{start + n}";
    Console.WriteLine($"{which}/{count}: {perImageMs:F1} ms per image ({steps} steps)");
}

static void PrintSummary(OnnxExecutionProvider provider, List<double> millisecondsPerImage, string output)
{
    Console.WriteLine($"provider {provider.DisplayName()}: mean {millisecondsPerImage.Average():F1} ms per image " +
        $"(first {millisecondsPerImage[0]:F1} ms, includes warm-up)");
    Console.WriteLine($"wrote {output}");
}

/// <summary>The demo's command line. Null values were not given: their defaults depend on the folder (a bundle or a pipeline).</summary>
sealed record DemoOptions(string Bundle, int? Count, int Steps, int Seed, string Provider, double? Guidance, int Batch, string? Output,
    string? PromptGiven, string? NegativePromptGiven, string? Noise, string? Scheduler)
{
    public const string Usage = """
        OnDeviceDemo FOLDER [options]   samples a `dprune export` bundle, or an exported Stable Diffusion ONNX pipeline,
                                        with DDIM on ONNX Runtime

          --steps S               DDIM steps (default 25)
          --seed N                seed of the initial noise (default 0)
          --count N               images to sample (default 16 for a bundle, 1 for a pipeline)
          --batch B               images sampled together (default 1)
          --provider P            auto | cpu | directml | cuda (default auto: DirectML, then CUDA, then the CPU)
          --output FILE           the PNG to write (default grid.png for a bundle, image.png for a pipeline)

        a bundle (model.onnx + onnx_model.json):
          --guidance G            classifier-free guidance for class-conditional models with a null class (default 1)

        a pipeline (model_index.json naming OnnxStableDiffusionPipeline):
          --prompt TEXT           what to draw (default: the empty prompt)
          --negative-prompt TEXT  what to steer away from (default: the empty prompt)
          --guidance-scale G      classifier-free guidance (default 7.5; 1 or less: the prompt alone)
          --scheduler ddim        run DDIM on the noise schedule of a pipeline whose scheduler is another class
        """;

    /// <summary>The prompt, "" when none was given.</summary>
    public string Prompt => PromptGiven ?? "";

    public string NegativePrompt => NegativePromptGiven ?? "";

    /// <summary>The options, or null when help was asked for.</summary>
    public static DemoOptions? Parse(string[] args)
    {
        string? bundle = null, output = null, prompt = null, negativePrompt = null, noise = null, scheduler = null;
        int? count = null;
        int steps = 25, seed = 0, batch = 1;
        string provider = "auto";
        double? guidance = null;
        for (int i = 0; i < args.Length; i++)
        {
            string arg = args[i];
            if (arg is "-h" or "--help") return null;
            if (!arg.StartsWith("--"))
            {
                if (bundle is not null) throw new ArgumentException($"Give one bundle folder; '{bundle}' and '{arg}' were both given.");
                bundle = arg;
                continue;
            }
            if (i + 1 >= args.Length) throw new ArgumentException($"{arg} needs a value.");
            string value = args[++i];
            switch (arg)
            {
                case "--count": count = Int(arg, value, 1); break;
                case "--steps": steps = Int(arg, value, 1); break;
                case "--seed": seed = Int(arg, value, int.MinValue); break;
                case "--batch": batch = Int(arg, value, 1); break;
                case "--provider": provider = OnnxExecutionProviders.Normalize(value); break;
                case "--output": output = value; break;
                case "--prompt": prompt = value; break;
                case "--negative-prompt": negativePrompt = value; break;
                case "--scheduler": scheduler = value; break;
                // hidden: the initial latents from a float32 safetensors file (its "noise" tensor, or its only one), for parity checks
                case "--noise": noise = value; break;
                case "--guidance" or "--guidance-scale":
                    if (!double.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double g) || !double.IsFinite(g))
                        throw new ArgumentException($"{arg} must be a number, not '{value}'.");
                    guidance = g;
                    break;
                default: throw new ArgumentException($"Unknown option {arg}.\n{Usage}");
            }
        }
        if (bundle is null) throw new ArgumentException($"Give the bundle folder `dprune export` wrote.\n{Usage}");
        return new DemoOptions(bundle, count, steps, seed, provider, guidance, batch, output, prompt, negativePrompt, noise, scheduler);
    }

    /// <summary>Refuses the options only a Stable Diffusion pipeline takes, for a single-model bundle.</summary>
    public void RefusePipelineOptions()
    {
        var given = new (string Name, object? Value)[] { ("--prompt", PromptGiven), ("--negative-prompt", NegativePromptGiven), ("--noise", Noise), ("--scheduler", Scheduler) }
            .Where(o => o.Value is not null).Select(o => o.Name).ToArray();
        if (given.Length > 0)
            throw new ArgumentException($"{string.Join(", ", given)} {(given.Length == 1 ? "is" : "are")} for Stable Diffusion pipelines (a folder whose model_index.json " +
                $"names OnnxStableDiffusionPipeline); '{Bundle}' is not one. Drop {(given.Length == 1 ? "it" : "them")}, or export a pipeline with dprune export --model PIPELINE.");
    }

    private static int Int(string option, string value, int min) =>
        int.TryParse(value, out int result) && result >= min ? result : throw new ArgumentException($"{option} must be an integer >= {min}, not '{value}'.");
}
