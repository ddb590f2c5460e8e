using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Inference.Onnx;

/// <summary>
/// An exported bundle as a <see cref="DiffusionSampler.Denoise"/>: tensors in, tensors out, ONNX Runtime in between —
/// so the same schedulers and classifier-free guidance run on either backend. Tensors go through the CPU: ONNX
/// Runtime gets copies of them as arrays and its prediction comes back on the sample's device.
/// (TorchSharp-dependent, so the on-device demo does not compile this file; it uses <see cref="ArrayDiffusionSampler"/>.)
/// </summary>
public sealed class OnnxDenoiser(OnnxDenoiserSession session) : IDisposable
{
    public OnnxDenoiserSession Session { get; } = session;
    public OnnxModelInfo Model => Session.Model;

    public static OnnxDenoiser Open(string bundleFolder, string provider = "auto", Action<string>? report = null) =>
        new(OnnxDenoiserSession.Open(bundleFolder, provider, report));

    /// <summary>(sample [B, C, H, W], timestep (scalar, [1] or [B]), labels [B] or null) -> prediction [B, in_channels, H, W].</summary>
    public Tensor Denoise(Tensor sample, Tensor timestep, Tensor? labels)
    {
        if (sample.dim() != 4)
            throw new ArgumentException($"The sample must be [batch, channels, height, width]; got [{string.Join(", ", sample.shape)}].");
        using var scope = NewDisposeScope();
        var shape = sample.shape.Select(s => (int)s).ToArray();
        float[] values = sample.detach().to(ScalarType.Float32, CPU).contiguous().data<float>().ToArray();
        // The sampler passes one scalar timestep for the whole batch; the graph takes int64 [batch].
        long[] timesteps = Int64Values(timestep);
        if (timesteps.Length == 1) timesteps = Enumerable.Repeat(timesteps[0], shape[0]).ToArray();
        long[]? classLabels = labels is null ? null : Int64Values(labels);

        float[] prediction = Session.Predict(values, shape, timesteps, classLabels);

        var result = tensor(prediction, [shape[0], Model.InChannels, shape[2], shape[3]]).to(sample.dtype, sample.device);
        return result.MoveToOuterDisposeScope();
    }

    public void Dispose() => Session.Dispose();

    private static long[] Int64Values(Tensor values) =>
        values.detach().to(ScalarType.Int64, CPU).flatten().data<long>().ToArray();
}
