using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using DiffusionPrune.Families;
using DiffusionPrune.Runtime;
using static TorchSharp.torch;

namespace DiffusionPrune.Cli.Benchmarks;

/// <summary>
/// <c>dprune probe-step --model DIR [--latent 64] [--batch 2] [--steps 3]</c> (hidden; benchmarks/sd15-unet.sh): loads a
/// denoiser and prints its load time and memory (VmRSS split into anonymous and file-backed pages, and the peak VmHWM),
/// then the time of one forward at the given latent size and batch (2 = one classifier-free-guided step) and the peak
/// memory after. Run it in a fresh process: VmHWM is a process-lifetime peak.
/// </summary>
public static class StepProbe
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "A model folder or pipeline folder.", Required = true };
        var latent = new Option<int?>("--latent") { Description = "Latent height and width (default: the config's sample_size)." };
        var batch = new Option<int>("--batch") { Description = "Batch per forward (2: a guided step's conditional and unconditional halves).", DefaultValueFactory = _ => 2 };
        var steps = new Option<int>("--steps") { Description = "Timed forwards, after one untimed warm-up.", DefaultValueFactory = _ => 3 };
        var command = new Command("probe-step", "Benchmark: load time, memory and time per forward of a denoiser.") { model, latent, batch, steps };
        command.Hidden = true;
        command.SetAction(parse => Commands.CliCommon.Run(() =>
        {
            Run(parse.GetValue(model)!, parse.GetValue(latent), parse.GetValue(batch), parse.GetValue(steps));
            return 0;
        }));
        return command;
    }

    private static string Mb(long? bytes) => bytes is long b ? (b / 1048576.0).ToString("F0", CultureInfo.InvariantCulture) : "n/a";

    public static void Run(string modelPath, int? latent, int batch, int steps)
    {
        if (batch < 1 || steps < 1) throw new ArgumentException("--batch and --steps must be at least 1.");
        Console.WriteLine($"before_load rss_mb={Mb(NativeMemory.ResidentBytes())} peak_rss_mb={Mb(NativeMemory.PeakResidentBytes())}");
        var clock = Stopwatch.StartNew();
        using var loaded = ModelFamilies.Load(modelPath);
        double loadSeconds = clock.Elapsed.TotalSeconds;
        NativeMemory.Trim();
        long parameters = loaded.parameters().Sum(p => p.numel());
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"loaded class={loaded.ClassName} parameters={parameters} float32_mb={Mb(parameters * 4)} seconds={loadSeconds:F1} rss_mb={Mb(NativeMemory.ResidentBytes())} " +
            $"rss_anon_mb={Mb(NativeMemory.ResidentAnonymousBytes())} rss_file_mb={Mb(NativeMemory.ResidentFileBytes())} peak_rss_mb={Mb(NativeMemory.PeakResidentBytes())}"));

        long h = latent ?? loaded.SampleSize[0], w = latent ?? loaded.SampleSize[^1];
        var conditioningInput = ModelFamilies.ConditioningOf(loaded);
        var times = new List<double>();
        using (no_grad())
        {
            for (int i = 0; i <= steps; i++)
            {
                using var scope = NewDisposeScope();
                var generator = new Generator((ulong)(i + 1));
                var sample = randn([batch, loaded.InChannels, h, w], generator: generator);
                var timestep = full([batch], 999 - 50 * i, ScalarType.Int64);
                var conditioning = conditioningInput.Zero(timestep, batch, CPU);
                clock.Restart();
                var output = loaded.Predict(sample, conditioning);
                double seconds = clock.Elapsed.TotalSeconds;
                if (!output.isfinite().all().item<bool>()) throw new InvalidOperationException($"forward {i} gave non-finite values");
                if (i > 0) times.Add(seconds);
            }
        }
        NativeMemory.Trim();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"step latent={h}x{w} batch={batch} seconds_mean={times.Average():F2} seconds_min={times.Min():F2} seconds_max={times.Max():F2} threads={get_num_threads()} " +
            $"rss_mb={Mb(NativeMemory.ResidentBytes())} peak_rss_mb={Mb(NativeMemory.PeakResidentBytes())}"));
    }
}
