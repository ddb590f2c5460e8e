// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL and Microsoft.ML.OnnxRuntime here.
using Microsoft.ML.OnnxRuntime;

namespace DiffusionPrune.Inference.Onnx;

/// <summary>An ONNX Runtime session and the execution provider it actually runs on.</summary>
public sealed class OnnxSession(InferenceSession session, SessionOptions options, OnnxExecutionProvider provider) : IDisposable
{
    public InferenceSession Session { get; } = session;
    public OnnxExecutionProvider Provider { get; } = provider;

    public void Dispose()
    {
        Session.Dispose();
        options.Dispose();
    }
}

/// <summary>
/// Opens an ONNX model on the execution provider a user asks for (<c>auto | cpu | directml | cuda</c>), falling back
/// to the CPU with a message when that provider is missing from this ONNX Runtime build or fails to start.
/// <para>
/// A provider counts as present when <c>OrtEnv.GetAvailableProviders()</c> lists it. Even then appending it can fail:
/// the CPU package throws <see cref="EntryPointNotFoundException"/> from <c>AppendExecutionProvider_DML</c> and
/// <c>AppendExecutionProvider_CUDA</c>, and a GPU build without its CUDA/cuDNN libraries throws
/// <see cref="OnnxRuntimeException"/> — either way we go on to the next candidate. <c>auto</c> tries DirectML, then
/// CUDA, then the CPU, and stays quiet about providers this build does not have.
/// </para>
/// The report callback always receives, last, one line naming the provider that actually runs.
/// </summary>
public static class OnnxSessionFactory
{
    /// <param name="modelPath">A model.onnx file.</param>
    /// <param name="choice">auto | cpu | directml | cuda.</param>
    /// <param name="report">Receives a line for each fallback, then "ONNX Runtime execution provider: NAME".</param>
    /// <param name="availableProviders">What this ONNX Runtime build offers; default <c>OrtEnv.Instance().GetAvailableProviders()</c>.
    /// Tests pass a list to exercise the path where a listed provider still fails to start.</param>
    public static OnnxSession Open(string modelPath, string choice = "auto", Action<string>? report = null,
        IReadOnlyCollection<string>? availableProviders = null)
    {
        string asked = OnnxExecutionProviders.Normalize(choice);
        if (!File.Exists(modelPath))
            throw new FileNotFoundException($"No ONNX model at '{modelPath}'.", modelPath);
        var available = availableProviders ?? OrtEnv.Instance().GetAvailableProviders();

        var failures = new List<string>();
        foreach (var candidate in OnnxExecutionProviders.Candidates(asked))
        {
            bool last = candidate == OnnxExecutionProvider.Cpu;
            if (!last && !available.Contains(candidate.RuntimeName()))
            {
                // auto silently skips what this build lacks; an explicit request deserves to know why it did not happen.
                if (asked != "auto") failures.Add(MissingMessage(candidate, available));
                continue;
            }
            SessionOptions? options = null;
            try
            {
                options = CreateOptions(candidate);
                var session = new InferenceSession(modelPath, options);
                foreach (var failure in failures)
                    report?.Invoke($"note: {failure}; falling back to {(last ? "the CPU" : candidate.DisplayName())}.");
                report?.Invoke($"ONNX Runtime execution provider: {candidate.DisplayName()}" + (asked == "auto" ? " (auto)" : ""));
                return new OnnxSession(session, options, candidate);
            }
            catch (Exception e) when (!last && e is EntryPointNotFoundException or DllNotFoundException or OnnxRuntimeException)
            {
                options?.Dispose();
                failures.Add($"{candidate.DisplayName()} could not start ({e.GetType().Name}: {e.Message.Trim()})");
            }
            catch
            {
                options?.Dispose();
                throw;
            }
        }
        throw new InvalidOperationException("The CPU provider is always the last candidate.");
    }

    /// <summary>Session options with <paramref name="provider"/> appended (the CPU provider is always there as ONNX Runtime's own fallback).</summary>
    public static SessionOptions CreateOptions(OnnxExecutionProvider provider)
    {
        var options = new SessionOptions();
        try
        {
            switch (provider)
            {
                case OnnxExecutionProvider.DirectML:
                    // DirectML supports neither memory patterns nor parallel execution (ONNX Runtime's DirectML docs).
                    options.EnableMemoryPattern = false;
                    options.ExecutionMode = ExecutionMode.ORT_SEQUENTIAL;
                    options.AppendExecutionProvider_DML(0);
                    break;
                case OnnxExecutionProvider.Cuda:
                    options.AppendExecutionProvider_CUDA(0);
                    break;
            }
            return options;
        }
        catch
        {
            options.Dispose();
            throw;
        }
    }

    private static string MissingMessage(OnnxExecutionProvider provider, IReadOnlyCollection<string> available)
    {
        string has = $"it has {string.Join(", ", available)}";
        return provider switch
        {
            OnnxExecutionProvider.DirectML =>
                $"DirectML was requested but this ONNX Runtime build has no DirectML provider ({has}). On Windows, build with -p:OnnxBackend=directml",
            _ =>
                $"CUDA was requested but this ONNX Runtime build has no CUDA provider ({has}). Neither the CPU nor the DirectML package has one: " +
                "CUDA needs ONNX Runtime's GPU package (Microsoft.ML.OnnxRuntime.Gpu) with CUDA and cuDNN installed",
        };
    }
}
