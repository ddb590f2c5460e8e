using DiffusionPrune.Export;
using DiffusionPrune.Models;
using Microsoft.ML.OnnxRuntime;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Export;

/// <summary>Runs an exported model.onnx with ONNX Runtime (CPU, one thread) and compares it to TorchSharp.</summary>
internal sealed class OnnxTestRunner : IDisposable
{
    private readonly InferenceSession _session;

    public OnnxTestRunner(string path)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 1, InterOpNumThreads = 1 };
        _session = new InferenceSession(path, options);
    }

    public IReadOnlyList<string> InputNames => _session.InputNames;
    public IReadOnlyList<string> OutputNames => _session.OutputNames;

    /// <summary>Runs the graph; class labels are int64 [B] (or float32 [B, D] for an identity class embedding).</summary>
    public Tensor Run(Tensor sample, Tensor timesteps, Tensor? classLabels = null)
    {
        var values = new List<OrtValue>();
        try
        {
            values.Add(Float(sample));
            values.Add(OrtValue.CreateTensorValueFromMemory(timesteps.to_type(ScalarType.Int64).contiguous().data<long>().ToArray(), timesteps.shape));
            if (classLabels is not null)
                values.Add(classLabels.dtype == ScalarType.Int64
                    ? OrtValue.CreateTensorValueFromMemory(classLabels.contiguous().data<long>().ToArray(), classLabels.shape)
                    : Float(classLabels));
            var names = _session.InputNames.Take(values.Count).ToArray();
            using var runOptions = new RunOptions();
            using var outputs = _session.Run(runOptions, names, values, [OnnxContract.Output]);
            var output = outputs[0];
            long[] shape = output.GetTensorTypeAndShape().Shape;
            return tensor(output.GetTensorDataAsSpan<float>().ToArray(), shape);
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    private static OrtValue Float(Tensor t) =>
        OrtValue.CreateTensorValueFromMemory(t.to_type(ScalarType.Float32).contiguous().data<float>().ToArray(), t.shape);

    public void Dispose() => _session.Dispose();

    /// <summary>
    /// Exports <paramref name="model"/> to a temporary model.onnx, runs it at batch 1 and 3 from the same file and
    /// returns the worst relative error against <see cref="DiffusionModel.Forward"/> (max |diff| / max(1, max |ref|)).
    /// </summary>
    public static double ExportAndCompare(DiffusionModel model, long seed, Func<int, Tensor>? classLabels = null, long[]? timestepPool = null)
    {
        model.eval();
        using var temp = Fixtures.Temp();
        string path = temp.File(OnnxContract.FileName);
        OnnxExporter.Write(model, path);
        using var runner = new OnnxTestRunner(path);
        double worst = 0;
        foreach (int batch in new[] { 1, 3 })
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var generator = new Generator((ulong)(seed + batch));
            var sample = randn([batch, model.InChannels, model.SampleSize[0], model.SampleSize[1]], generator: generator);
            long[] pool = timestepPool ?? [0, 1, 17, 500, 613, 999];
            var timesteps = tensor(Enumerable.Range(0, batch).Select(i => pool[(i * 2 + (int)seed + batch) % pool.Length]).ToArray());
            Tensor? labels = classLabels?.Invoke(batch);
            if (labels is null && OnnxContract.TakesClassLabels(model))
            {
                int classes = model.NumClasses ?? 1;
                // the last row of a batch is the null class where the model has one
                labels = tensor(Enumerable.Range(0, batch).Select(i => i == batch - 1 && model.NullClass is int nc ? nc : (long)((i * 7 + seed) % classes)).ToArray());
            }
            var expected = model.Forward(sample, timesteps, labels);
            var actual = runner.Run(sample, timesteps, labels);
            Assert.Equal(expected.shape, actual.shape);
            worst = Math.Max(worst, Fixtures.RelativeError(actual, expected));
        }
        return worst;
    }
}
