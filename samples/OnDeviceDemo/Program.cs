using System.Diagnostics;
using DiffusionPrune.Formats;
using DiffusionPrune.Imaging;
using DiffusionPrune.Inference.Onnx;

// OnDeviceDemo BUNDLE [--count N] [--steps S] [--seed N] [--provider auto|cpu|directml|cuda] [--guidance G] [--batch B] [--output grid.png]
// Samples images from a `dprune export` bundle with DDIM on ONNX Runtime and writes them as one PNG grid.
try
{
    var options = DemoOptions.Parse(args);
    if (options is null)
    {
        Console.WriteLine(DemoOptions.Usage);
        return 0;
    }
    return Run(options);
}
catch (Exception e) when (e is ArgumentException or FileNotFoundException or DirectoryNotFoundException or InvalidDataException or NotSupportedException)
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
    if (options.Guidance != 1.0 && model.NullClass is null)
        throw new ArgumentException("--guidance needs a class-conditional model with a null class; this one has none. Drop --guidance.");

    // 2. all the noise from one seed, so the images do not depend on --batch
    int c = model.InChannels, h = model.SampleSize[0], w = model.SampleSize[1], perImage = c * h * w;
    var noise = ArrayDiffusionSampler.GaussianNoise(options.Count * perImage, options.Seed);
    long[]? labels = model.NumClasses is int classes ? ArrayDiffusionSampler.CyclicLabels(options.Count, classes) : null;

    // 3. DDIM, one batch at a time, timing each
    var images = new float[options.Count * perImage];
    var millisecondsPerImage = new List<double>();
    for (int start = 0; start < options.Count; start += options.Batch)
    {
        int count = Math.Min(options.Batch, options.Count - start);
        var batchNoise = noise.AsSpan(start * perImage, count * perImage).ToArray();
        var batchLabels = labels?[start..(start + count)];
        var watch = Stopwatch.StartNew();
        var result = ArrayDiffusionSampler.Sample(session.Predict, model.NullClass, scheduler, batchNoise, [count, c, h, w], batchLabels,
            options.Steps, options.Guidance);
        double perImageMs = watch.Elapsed.TotalMilliseconds / count;
        millisecondsPerImage.Add(perImageMs);
        result.CopyTo(images, start * perImage);
        string which = count == 1 ? $"image {start + 1}" : $"images {start + 1}-{start + count}";
        Console.WriteLine($"{which}/{options.Count}: {perImageMs:F1} ms per image ({options.Steps} steps)");
    }

    // 4. the grid
    PixelGrid.Save(options.Output, images, [options.Count, c, h, w], scale: 2);
    Console.WriteLine($"provider {session.Provider.DisplayName()}: mean {millisecondsPerImage.Average():F1} ms per image " +
        $"(first {millisecondsPerImage[0]:F1} ms, includes warm-up)");
    Console.WriteLine($"wrote {options.Output}");
    return 0;
}

/// <summary>The demo's command line.</summary>
sealed record DemoOptions(string Bundle, int Count, int Steps, int Seed, string Provider, double Guidance, int Batch, string Output)
{
    public const string Usage = """
        OnDeviceDemo BUNDLE [options]   samples a `dprune export` bundle with DDIM on ONNX Runtime

          --count N        images to sample (default 16)
          --steps S        DDIM steps (default 25)
          --seed N         seed of the initial noise (default 0)
          --provider P     auto | cpu | directml | cuda (default auto: DirectML, then CUDA, then the CPU)
          --guidance G     classifier-free guidance for class-conditional models with a null class (default 1)
          --batch B        images sampled together (default 1)
          --output FILE    the PNG grid to write (default grid.png)
        """;

    /// <summary>The options, or null when help was asked for.</summary>
    public static DemoOptions? Parse(string[] args)
    {
        string? bundle = null;
        int count = 16, steps = 25, seed = 0, batch = 1;
        string provider = "auto", output = "grid.png";
        double guidance = 1.0;
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
                case "--guidance":
                    if (!double.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out guidance))
                        throw new ArgumentException($"--guidance must be a number, not '{value}'.");
                    break;
                default: throw new ArgumentException($"Unknown option {arg}.\n{Usage}");
            }
        }
        if (bundle is null) throw new ArgumentException($"Give the bundle folder `dprune export` wrote.\n{Usage}");
        return new DemoOptions(bundle, count, steps, seed, provider, guidance, batch, output);
    }

    private static int Int(string option, string value, int min) =>
        int.TryParse(value, out int result) && result >= min ? result : throw new ArgumentException($"{option} must be an integer >= {min}, not '{value}'.");
}
