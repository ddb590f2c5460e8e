using System.CommandLine;
using DiffusionPrune.Data;
using DiffusionPrune.Export;
using DiffusionPrune.Formats;
using DiffusionPrune.Pruning;
using DiffusionPrune.Schedulers;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using TorchSharp;

namespace DiffusionPrune.Cli.Commands;

/// <summary>Options and error handling shared by every command.</summary>
public static class CliCommon
{
    public static Option<string> ModelOption() => new("--model")
    {
        Description = "A diffusers model folder (config.json + safetensors) or a pipeline folder (model_index.json).",
        Required = true,
    };

    /// <summary>The images a command trains or distils on (<c>train</c>, <c>distill</c>).</summary>
    public static Option<string> DataOption() => new("--data")
    {
        Description = "Images: mnist (samples/data), an mnist.bin.gz file, or a folder of PNG/JPEG images (class subfolders 0/, 1/, ... for class-conditional models), resized to the model's size.",
        DefaultValueFactory = _ => "mnist",
    };

    public static Option<string> DeviceOption() => new("--device")
    {
        Description = "auto | cpu | cuda (falls back to the CPU with a message when CUDA is absent).",
        DefaultValueFactory = _ => "auto",
    };

    public static Option<string> BackendOption() => new("--backend")
    {
        Description = "torch (a diffusers folder, TorchSharp on --device) | onnx (a folder `dprune export` wrote, ONNX Runtime on --provider).",
        DefaultValueFactory = _ => "torch",
    };

    public static Option<string> ProviderOption() => new("--provider")
    {
        Description = "ONNX Runtime execution provider for --backend onnx: auto | cpu | directml | cuda (auto: DirectML, then CUDA, then the CPU; " +
            "a missing provider falls back to the CPU with a message).",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary>Where the ONNX backend's provider lines (fallbacks, then the provider that runs) are printed.</summary>
    public static void ReportProvider(string line) => Console.Error.WriteLine(line);

    public static torch.Device ResolveDevice(string choice) =>
        DeviceSelector.Resolve(choice, message => Console.Error.WriteLine("note: " + message));

    /// <summary>Errors a user can cause and fix (<see cref="UserErrors"/>).</summary>
    public static bool IsUserError(Exception e) => UserErrors.Is(e);

    /// <summary>
    /// Runs a command body; errors a user can cause (bad path, corrupt file, wrong arguments) print one
    /// line to stderr and return exit code 2, anything else prints the exception and returns 1.
    /// </summary>
    public static int Run(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("cancelled: stopped at the end of the step it was in; no output was left half-written.");
            return 130;
        }
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (Exception e)
        {
            // Our bug, not the user's: one line with where the full trace is; the trace itself only under --verbose.
            string? log = WriteCrashLog(e);
            Console.Error.WriteLine($"error: unexpected failure ({e.GetType().Name}: {FirstLine(e.Message)}); " +
                (log is null ? "the trace could not be saved; run again with --verbose to see it." : $"the full trace is in {log}. Please report it."));
            if (Verbose) Console.Error.WriteLine(e);
            return 1;
        }
    }

    private static CancellationTokenSource? _interrupt;

    /// <summary>
    /// Cancelled by the first Ctrl+C (or SIGINT): the running stage stops at the end of its iteration or step and removes
    /// its partial output; a second Ctrl+C ends the process at once.
    /// </summary>
    public static CancellationToken Interrupt
    {
        get
        {
            if (_interrupt is null)
            {
                _interrupt = new CancellationTokenSource();
                Console.CancelKeyPress += (_, e) =>
                {
                    if (_interrupt.IsCancellationRequested) return; // the second press: let it end the process
                    e.Cancel = true;
                    Console.Error.WriteLine();
                    Console.Error.WriteLine("cancelling at the end of this step (Ctrl+C again to stop at once)...");
                    _interrupt.Cancel();
                };
            }
            return _interrupt.Token;
        }
    }

    /// <summary>Waits for a pipeline stage, rethrowing its own exception (not an AggregateException).</summary>
    public static T Await<T>(Task<T> stage) => stage.GetAwaiter().GetResult();

    /// <summary>Set by <c>--verbose</c>: internal errors print their trace on stderr too.</summary>
    public static bool Verbose { get; set; }

    private static string FirstLine(string text)
    {
        int newline = text.IndexOfAny(['\r', '\n']);
        return newline < 0 ? text : text[..newline];
    }

    /// <summary>Writes the exception's full trace to <c>&lt;cache&gt;/logs/dprune-*.log</c> (or the temp folder); null if neither is writable.</summary>
    internal static string? WriteCrashLog(Exception e)
    {
        string stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", System.Globalization.CultureInfo.InvariantCulture);
        string text = $"dprune {string.Join(' ', Environment.GetCommandLineArgs().Skip(1))}\n{DateTime.UtcNow:O}\n\n{e}\n";
        foreach (var folder in new[] { NumericsGuard.DefaultCacheDirectory() is { } cache ? Path.Combine(cache, "logs") : null, Path.GetTempPath() })
        {
            if (folder is null) continue;
            try
            {
                Directory.CreateDirectory(folder);
                string path = Path.Combine(folder, $"dprune-{stamp}-{Environment.ProcessId}.log");
                File.WriteAllText(path, text);
                return path;
            }
            catch (Exception io) when (io is IOException or UnauthorizedAccessException)
            {
                // try the next folder
            }
        }
        return null;
    }
}
