using System.Diagnostics;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Analysis;

/// <summary>
/// Latency of <see cref="DiffusionModel.Forward"/> in TorchSharp (eval mode, no_grad) on the same inputs
/// <see cref="OnnxLatency"/> feeds ONNX Runtime, so the two backends compare run for run. Time it on the CPU
/// for that comparison; on CUDA each timed call waits for the output to reach the host. A text-conditioned U-Net (Stable
/// Diffusion's) is fed zero text states of the shape its pipeline feeds, [batch, 77, cross_attention_dim] (and SDXL's
/// added conditions), as cost counting is: its compute does not depend on their values.
/// </summary>
public static class TorchLatency
{
    public static IReadOnlyList<LatencyResult> Measure(DiffusionModel model, IReadOnlyList<int> batches, LatencyOptions? options = null, Action<string>? log = null)
    {
        options ??= new LatencyOptions();
        options.Validate();
        LatencyOptions.ValidateBatches(batches);
        model.eval();
        var device = model.parameters().FirstOrDefault()?.device ?? CPU;
        var conditioning = ModelFamilies.ConditioningOf(model);
        var (classInput, embeddingDim) = conditioning.Kind switch
        {
            ConditioningKind.ClassEmbedding => (ClassInputKind.Embedding, conditioning.EmbeddingDim),
            ConditioningKind.ClassLabels => (ClassInputKind.Labels, 0),
            _ => (ClassInputKind.None, 0),
        };
        var results = new List<LatencyResult>();
        foreach (int batch in batches)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var inputs = LatencyInputs.Create(batch, model.InChannels, model.SampleSize[0], model.SampleSize[1], classInput, embeddingDim, options.Seed);
            var sample = tensor(inputs.Sample, inputs.SampleShape).to(device);
            var timesteps = tensor(inputs.Timesteps, [batch]).to(device);
            Tensor? labels = inputs.ClassInput switch
            {
                ClassInputKind.Labels => tensor(inputs.ClassLabels!, inputs.ClassShape!).to(device),
                ClassInputKind.Embedding => tensor(inputs.ClassEmbeddings!, inputs.ClassShape!).to(device),
                _ => null,
            };
            var text = conditioning.Kind == ConditioningKind.TextStates ? conditioning.Zero(timesteps, batch, device) : null;
            var timings = new List<double>(options.TimedRuns);
            for (int run = 0; run < options.WarmupRuns + options.TimedRuns; run++)
            {
                using var runScope = NewDisposeScope();
                long start = Stopwatch.GetTimestamp();
                var output = text is null ? model.Forward(sample, timesteps, labels) : model.Forward(sample, text);
                if (device.type != DeviceType.CPU) output.cpu();
                if (run >= options.WarmupRuns) timings.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
            var result = LatencyResult.FromTimings(LatencyResult.TorchSharp, batch, options.WarmupRuns, timings);
            log?.Invoke(result.ToString());
            results.Add(result);
        }
        return results;
    }
}
