// TorchSharp-free: times a model.onnx with ONNX Runtime alone. Use only the BCL and ONNX Runtime here.
using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;

namespace DiffusionPrune.Analysis;

/// <summary>
/// Latency of an exported <c>model.onnx</c> (the contract of Export/OnnxExporter.cs: <c>sample</c>, <c>timestep</c>,
/// optional <c>class_labels</c>; output <c>out_sample</c>) in an ONNX Runtime CPU session with its default graph
/// optimisations. One session serves every batch size (the batch dimension is dynamic); shapes are read from the
/// graph, so no model code is needed. Compare with <see cref="TorchLatency"/>, which feeds the same values.
/// </summary>
public static class OnnxLatency
{
    public static IReadOnlyList<LatencyResult> Measure(string onnxPath, IReadOnlyList<int> batches, LatencyOptions? options = null, Action<string>? log = null)
    {
        options ??= new LatencyOptions();
        options.Validate();
        LatencyOptions.ValidateBatches(batches);
        if (!File.Exists(onnxPath))
            throw new FileNotFoundException($"No ONNX model at '{onnxPath}'. Export one with: dprune export --model DIR --format onnx --output DIR", onnxPath);

        using var sessionOptions = new SessionOptions { IntraOpNumThreads = options.IntraOpThreads, ExecutionMode = ExecutionMode.ORT_SEQUENTIAL };
        using var session = new InferenceSession(onnxPath, sessionOptions);
        var (channels, height, width, classInput, embeddingDim) = DescribeInputs(session, onnxPath);
        string output = session.OutputNames[0];
        var results = new List<LatencyResult>();
        foreach (int batch in batches)
        {
            var inputs = LatencyInputs.Create(batch, channels, height, width, classInput, embeddingDim, options.Seed);
            var names = new List<string> { "sample", "timestep" };
            var values = new List<OrtValue>
            {
                OrtValue.CreateTensorValueFromMemory(inputs.Sample, inputs.SampleShape),
                OrtValue.CreateTensorValueFromMemory(inputs.Timesteps, [batch]),
            };
            try
            {
                if (inputs.ClassLabels is not null)
                    values.Add(OrtValue.CreateTensorValueFromMemory(inputs.ClassLabels, inputs.ClassShape!));
                else if (inputs.ClassEmbeddings is not null)
                    values.Add(OrtValue.CreateTensorValueFromMemory(inputs.ClassEmbeddings, inputs.ClassShape!));
                if (values.Count == 3) names.Add("class_labels");
                using var runOptions = new RunOptions();
                var timings = new List<double>(options.TimedRuns);
                for (int run = 0; run < options.WarmupRuns + options.TimedRuns; run++)
                {
                    long start = Stopwatch.GetTimestamp();
                    using (session.Run(runOptions, names, values, [output])) { }
                    if (run >= options.WarmupRuns) timings.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
                }
                var result = LatencyResult.FromTimings(LatencyResult.OnnxRuntimeCpu, batch, options.WarmupRuns, timings);
                log?.Invoke(result.ToString());
                results.Add(result);
            }
            finally
            {
                foreach (var v in values) v.Dispose();
            }
        }
        return results;
    }

    /// <summary>Channels and size of <c>sample</c> and the kind of <c>class_labels</c>, from the graph's declared inputs.</summary>
    private static (int channels, int height, int width, ClassInputKind classInput, int embeddingDim) DescribeInputs(InferenceSession session, string path)
    {
        var inputs = session.InputMetadata;
        if (!inputs.TryGetValue("sample", out var sample) || !inputs.ContainsKey("timestep"))
            throw new InvalidDataException($"'{path}' does not follow the denoiser contract: its inputs are {string.Join(", ", inputs.Keys)}, expected sample, timestep and optionally class_labels.");
        int[] dims = sample.Dimensions;
        if (dims.Length != 4 || dims[1] < 1 || dims[2] < 1 || dims[3] < 1)
            throw new InvalidDataException($"'{path}': input sample has shape [{string.Join(", ", dims)}]; expected [batch, channels, height, width] with fixed channels and size.");
        var classInput = ClassInputKind.None;
        int embeddingDim = 0;
        if (inputs.TryGetValue("class_labels", out var labels))
        {
            classInput = labels.ElementType == typeof(float) ? ClassInputKind.Embedding : ClassInputKind.Labels;
            if (classInput == ClassInputKind.Embedding) embeddingDim = labels.Dimensions[^1];
        }
        return (dims[1], dims[2], dims[3], classInput, embeddingDim);
    }
}
