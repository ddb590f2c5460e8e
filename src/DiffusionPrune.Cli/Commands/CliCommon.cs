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

    /// <summary>Errors a user can cause and fix: bad paths, corrupt files, wrong arguments, impossible targets.</summary>
    public static bool IsUserError(Exception e) => e is ModelFormatException or SafetensorsFormatException or SchedulerConfigException
        or MnistFormatException or PruningPlanException or FileNotFoundException or DirectoryNotFoundException or ArgumentException
        or KeyNotFoundException or NotSupportedException or InvalidDataException or OnnxExportException
        or Runtime.NumericsFaultException or Runtime.NonFiniteValueException;

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
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"error: unexpected failure: {e}");
            return 1;
        }
    }
}
