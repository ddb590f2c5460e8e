using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;
using Microsoft.ML.OnnxRuntime;

namespace DiffusionPrune.Tests.Inference.Onnx;

/// <summary>
/// Provider choice on this machine's ONNX Runtime build (the CPU package: it lists only CPUExecutionProvider).
/// On a build that has a GPU provider (DirectML on Windows with -p:OnnxBackend=directml) those tests check only
/// that the last line names the provider that runs; xunit 2 has no runtime skip.
/// </summary>
public class OnnxSessionFactoryTests
{
    private static readonly string[] Available = OrtEnv.Instance().GetAvailableProviders();

    private static bool HasGpuProvider => Available.Contains("DmlExecutionProvider") || Available.Contains("CUDAExecutionProvider");

    private static (OnnxSession session, List<string> lines) Open(TempFolder temp, string choice, IReadOnlyCollection<string>? available = null)
    {
        string folder = new TinyOnnxBundle().WriteTo(temp.File("bundle"));
        var lines = new List<string>();
        var session = OnnxSessionFactory.Open(Path.Combine(folder, ModelFolder.OnnxModel), choice, lines.Add, available);
        return (session, lines);
    }

    [Fact]
    public void Cpu_runs_on_the_cpu_and_reports_it()
    {
        using var temp = Fixtures.Temp();
        var (session, lines) = Open(temp, "cpu");
        using (session)
        {
            Assert.Equal(OnnxExecutionProvider.Cpu, session.Provider);
            Assert.Equal(["ONNX Runtime execution provider: CPU"], lines);
        }
    }

    [Fact]
    public void Directml_where_the_build_lacks_it_falls_back_to_the_cpu_with_a_message_naming_the_build_property()
    {
        using var temp = Fixtures.Temp();
        var (session, lines) = Open(temp, "directml");
        using (session)
        {
            Assert.Equal($"ONNX Runtime execution provider: {session.Provider.DisplayName()}", lines[^1].Replace(" (auto)", ""));
            if (Available.Contains("DmlExecutionProvider")) return;
            Assert.Equal(OnnxExecutionProvider.Cpu, session.Provider);
            Assert.Equal(2, lines.Count);
            Assert.StartsWith("note: DirectML was requested but this ONNX Runtime build has no DirectML provider", lines[0]);
            Assert.Contains("-p:OnnxBackend=directml", lines[0]);
            Assert.EndsWith("falling back to the CPU.", lines[0]);
            Assert.Equal("ONNX Runtime execution provider: CPU", lines[1]);
        }
    }

    [Fact]
    public void Cuda_where_the_build_lacks_it_falls_back_to_the_cpu_with_a_message()
    {
        using var temp = Fixtures.Temp();
        var (session, lines) = Open(temp, "cuda");
        using (session)
        {
            Assert.Equal($"ONNX Runtime execution provider: {session.Provider.DisplayName()}", lines[^1].Replace(" (auto)", ""));
            if (Available.Contains("CUDAExecutionProvider")) return;
            Assert.Equal(OnnxExecutionProvider.Cpu, session.Provider);
            Assert.StartsWith("note: CUDA was requested but this ONNX Runtime build has no CUDA provider", lines[0]);
            Assert.EndsWith("falling back to the CPU.", lines[0]);
            Assert.Equal("ONNX Runtime execution provider: CPU", lines[^1]);
        }
    }

    [Fact]
    public void Auto_without_gpu_providers_runs_on_the_cpu_without_fallback_notes()
    {
        using var temp = Fixtures.Temp();
        var (session, lines) = Open(temp, "auto");
        using (session)
        {
            Assert.Equal($"ONNX Runtime execution provider: {session.Provider.DisplayName()}", lines[^1].Replace(" (auto)", ""));
            if (HasGpuProvider) return;
            Assert.Equal(OnnxExecutionProvider.Cpu, session.Provider);
            Assert.Equal(["ONNX Runtime execution provider: CPU (auto)"], lines);
        }
    }

    [Fact]
    public void A_listed_provider_that_cannot_start_is_reported_and_the_next_candidate_runs()
    {
        // Pretend the build lists DirectML and CUDA: on the CPU package appending either throws
        // EntryPointNotFoundException, which must become a note and a fallback, not a crash.
        using var temp = Fixtures.Temp();
        var (session, lines) = Open(temp, "auto", ["DmlExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]);
        using (session)
        {
            Assert.Equal($"ONNX Runtime execution provider: {session.Provider.DisplayName()}", lines[^1].Replace(" (auto)", ""));
            if (HasGpuProvider) return;
            Assert.Equal(OnnxExecutionProvider.Cpu, session.Provider);
            Assert.Equal(3, lines.Count);
            Assert.StartsWith("note: DirectML could not start (EntryPointNotFoundException", lines[0]);
            Assert.StartsWith("note: CUDA could not start (EntryPointNotFoundException", lines[1]);
            Assert.Equal("ONNX Runtime execution provider: CPU (auto)", lines[2]);
        }
    }

    [Fact]
    public void Candidates_put_directml_before_cuda_before_the_cpu()
    {
        Assert.Equal([OnnxExecutionProvider.DirectML, OnnxExecutionProvider.Cuda, OnnxExecutionProvider.Cpu], OnnxExecutionProviders.Candidates("auto"));
        Assert.Equal([OnnxExecutionProvider.DirectML, OnnxExecutionProvider.Cpu], OnnxExecutionProviders.Candidates("DirectML"));
        Assert.Equal([OnnxExecutionProvider.Cuda, OnnxExecutionProvider.Cpu], OnnxExecutionProviders.Candidates("cuda"));
        Assert.Equal([OnnxExecutionProvider.Cpu], OnnxExecutionProviders.Candidates("cpu"));
    }

    [Fact]
    public void An_unknown_provider_is_a_user_error_listing_the_choices()
    {
        using var temp = Fixtures.Temp();
        var error = Assert.Throws<ArgumentException>(() => Open(temp, "tpu"));
        Assert.Contains("auto, cpu, directml, cuda", error.Message);
    }
}
