// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL and Microsoft.ML.OnnxRuntime here.
using DiffusionPrune.Formats;
using Microsoft.ML.OnnxRuntime;

namespace DiffusionPrune.Inference.Onnx;

/// <summary>
/// An exported denoiser (model.onnx + onnx_model.json) on ONNX Runtime, on plain arrays: (sample, timestep, labels) ->
/// prediction, the ONNX twin of <c>DiffusionModel.Predict</c>. The graph's contract: inputs <c>sample</c> float32
/// [batch, C, H, W], <c>timestep</c> int64 [batch] and, for class-conditional models only, <c>class_labels</c> int64
/// [batch]; output <c>out_sample</c> float32 [batch, out_channels, H, W], of which the prediction is the first
/// in_channels channels (the rest is a learned sigma).
/// </summary>
public sealed class OnnxDenoiserSession : IDisposable
{
    public const string SampleInput = OnnxBundle.SampleInput;
    public const string TimestepInput = OnnxBundle.TimestepInput;
    public const string ClassLabelsInput = OnnxBundle.ClassLabelsInput;
    public const string OutputName = OnnxBundle.Output;

    private readonly OnnxSession _session;
    private readonly string _outputName;
    private readonly bool _takesLabels;

    /// <summary>The bundle folder.</summary>
    public string Folder { get; }
    public OnnxModelInfo Model { get; }

    /// <summary>The execution provider that actually runs the graph (after any fallback).</summary>
    public OnnxExecutionProvider Provider => _session.Provider;

    public InferenceSession Session => _session.Session;

    private OnnxDenoiserSession(string folder, OnnxModelInfo model, OnnxSession session)
    {
        Folder = folder;
        Model = model;
        _session = session;
        string where = Path.Combine(folder, ModelFolder.OnnxModel);
        var inputs = session.Session.InputMetadata;
        RequireInput(inputs, SampleInput, typeof(float), where);
        RequireInput(inputs, TimestepInput, typeof(long), where);
        var unexpected = inputs.Keys.Except([SampleInput, TimestepInput, ClassLabelsInput]).ToArray();
        if (unexpected.Length > 0)
            throw new InvalidDataException($"'{where}' has inputs we do not feed ({string.Join(", ", unexpected)}); a denoiser takes sample, timestep and (class-conditional) class_labels.");
        if (!inputs.Keys.Order(StringComparer.Ordinal).SequenceEqual(model.InputNames.Order(StringComparer.Ordinal)))
            throw new InvalidDataException(
                $"'{where}' has inputs {string.Join(", ", inputs.Keys)} but {ModelFolder.OnnxInfo} lists {string.Join(", ", model.InputNames)}; " +
                "the two files do not belong together. Export the model again.");
        _takesLabels = inputs.ContainsKey(ClassLabelsInput);
        if (_takesLabels && model.NumClasses is null)
            // A U-Net whose class_embed_type is "timestep" or "identity" exports fine but has no class count to sample from.
            throw new NotSupportedException(
                $"'{where}' takes class_labels but its model has no num_classes (a class embedding of type timestep or identity); " +
                "sampling feeds labels from a class table, so the ONNX backend runs unconditional models and models with num_class_embeds or a DiT.");
        if (!_takesLabels && model.NumClasses is not null)
            throw new InvalidDataException(
                $"{ModelFolder.OnnxInfo} says the model has {model.NumClasses} classes but '{where}' has no class_labels input; the two files do not belong together. Export the model again.");
        if (_takesLabels) RequireInput(inputs, ClassLabelsInput, typeof(long), where);
        _outputName = session.Session.OutputMetadata.ContainsKey(OutputName) ? OutputName : session.Session.OutputNames[0];
        if (session.Session.OutputMetadata[_outputName].ElementType != typeof(float))
            throw new InvalidDataException($"'{where}': output '{_outputName}' is not float32.");
    }

    /// <summary>Opens a bundle folder on the requested provider (auto | cpu | directml | cuda); see <see cref="OnnxSessionFactory.Open"/>.</summary>
    public static OnnxDenoiserSession Open(string bundleFolder, string provider = "auto", Action<string>? report = null,
        IReadOnlyCollection<string>? availableProviders = null)
    {
        OnnxBundle.Require(bundleFolder);
        var model = OnnxModelInfo.Load(Path.Combine(bundleFolder, ModelFolder.OnnxInfo));
        string modelPath = Path.Combine(bundleFolder, ModelFolder.OnnxModel);
        OnnxGraphSafety.Check(modelPath); // an untrusted bundle: no data from outside its folder, no giant graphs
        OnnxSession session;
        try
        {
            session = OnnxSessionFactory.Open(modelPath, provider, report, availableProviders);
        }
        catch (OnnxRuntimeException e)
        {
            throw new InvalidDataException($"ONNX Runtime cannot load '{modelPath}' ({e.Message.Trim()}). The file is corrupt or not an exported denoiser; export the model again.", e);
        }
        try
        {
            return new OnnxDenoiserSession(bundleFolder, model, session);
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The model's prediction: the first in_channels channels of <c>out_sample</c>, [batch, in_channels, H, W] row-major.
    /// </summary>
    /// <param name="sample">[batch, in_channels, H, W] row-major.</param>
    /// <param name="shape">The sample's shape (4 entries).</param>
    /// <param name="timesteps">One per batch element, or a single one for the whole batch.</param>
    /// <param name="classLabels">One per batch element for class-conditional models; null otherwise.</param>
    public float[] Predict(float[] sample, int[] shape, long[] timesteps, long[]? classLabels = null)
    {
        if (shape.Length != 4 || shape[1] != Model.InChannels || shape.Any(s => s < 1))
            throw new ArgumentException($"The sample must be [batch, {Model.InChannels}, H, W]; got [{string.Join(", ", shape)}].", nameof(shape));
        int batch = shape[0], channels = shape[1], pixels = shape[2] * shape[3];
        if (sample.Length != batch * channels * pixels)
            throw new ArgumentException($"The sample has {sample.Length} values; shape [{string.Join(", ", shape)}] needs {batch * channels * pixels}.", nameof(sample));
        long[] t = PerBatch(timesteps, batch, "timestep");
        long[]? labels = null;
        if (_takesLabels)
            labels = PerBatch(classLabels ?? throw new ArgumentException("This model is class-conditional: give class labels.", nameof(classLabels)), batch, "class label");
        else if (classLabels is not null)
            throw new ArgumentException("This model is not class-conditional; pass no class labels.", nameof(classLabels));

        // 1. inputs (the arrays are pinned, not copied)
        var values = new List<OrtValue>(3);
        try
        {
            values.Add(OrtValue.CreateTensorValueFromMemory(sample, shape.Select(s => (long)s).ToArray()));
            values.Add(OrtValue.CreateTensorValueFromMemory(t, [batch]));
            if (labels is not null) values.Add(OrtValue.CreateTensorValueFromMemory(labels, [batch]));
            string[] names = labels is null ? [SampleInput, TimestepInput] : [SampleInput, TimestepInput, ClassLabelsInput];

            // 2. run
            using var runOptions = new RunOptions();
            using var outputs = _session.Session.Run(runOptions, names, values, [_outputName]);
            var output = outputs[0];
            long[] outShape = output.GetTensorTypeAndShape().Shape;
            if (outShape.Length != 4 || outShape[0] != batch || outShape[1] < channels || outShape[2] != shape[2] || outShape[3] != shape[3])
                throw new InvalidDataException(
                    $"'{Folder}': {_outputName} is [{string.Join(", ", outShape)}] for a sample [{string.Join(", ", shape)}]; expected [{batch}, >= {channels}, {shape[2]}, {shape[3]}].");

            // 3. the first in_channels channels of each batch element (drops a learned sigma)
            var data = output.GetTensorDataAsSpan<float>();
            int perInput = channels * pixels, perOutput = (int)outShape[1] * pixels;
            var prediction = new float[batch * perInput];
            for (int b = 0; b < batch; b++)
                data.Slice(b * perOutput, perInput).CopyTo(prediction.AsSpan(b * perInput, perInput));
            return prediction;
        }
        finally
        {
            foreach (var value in values) value.Dispose();
        }
    }

    public void Dispose() => _session.Dispose();

    private static long[] PerBatch(long[] values, int batch, string what)
    {
        if (values.Length == batch) return values;
        if (values.Length == 1) return Enumerable.Repeat(values[0], batch).ToArray();
        throw new ArgumentException($"Got {values.Length} {what}s for a batch of {batch}; give one per batch element (or a single {what}).");
    }

    private static void RequireInput(IReadOnlyDictionary<string, NodeMetadata> inputs, string name, Type type, string where)
    {
        if (!inputs.TryGetValue(name, out var metadata))
            throw new InvalidDataException($"'{where}' has no '{name}' input (it has: {string.Join(", ", inputs.Keys)}); it is not an exported denoiser. Export the model with `dprune export`.");
        if (metadata.ElementType != type)
            throw new InvalidDataException($"'{where}': input '{name}' is {metadata.ElementType.Name}, expected {type.Name}.");
    }
}
