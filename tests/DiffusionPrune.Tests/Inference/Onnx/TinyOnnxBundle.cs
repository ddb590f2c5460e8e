using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;
using Google.Protobuf;
using Onnx;

namespace DiffusionPrune.Tests.Inference.Onnx;

/// <summary>
/// Hand-built ONNX bundles in the exporter's layout (model.onnx + onnx_model.json + scheduler_config.json), small
/// enough that every output can be computed in the test:
/// <c>out[b, c] = sample[b, c] * SampleScale + timestep[b] * TimestepScale (+ class_labels[b] * LabelScale)</c>,
/// with <see cref="SigmaChannels"/> extra channels of <see cref="SigmaValue"/> after the prediction (a learned sigma).
/// The batch dimension is dynamic.
/// </summary>
public sealed record TinyOnnxBundle
{
    public const float SampleScale = 0.5f;
    public float TimestepScale { get; init; } = 0.001f;
    public float LabelScale { get; init; } = 0.01f;
    public const float SigmaValue = 7f;

    public int Channels { get; init; } = 1;
    public int Size { get; init; } = 8;
    public int? NumClasses { get; init; }
    public int? NullClass { get; init; }
    /// <summary>Channels appended after the prediction (Channels for a learned-sigma model, else 0).</summary>
    public int SigmaChannels { get; init; }

    /// <summary>What the graph computes, for checking outputs: the prediction channels only.</summary>
    public float Expected(float sample, long timestep, long label = 0) =>
        sample * SampleScale + timestep * TimestepScale + (NumClasses is null ? 0f : label * LabelScale);

    /// <summary>Writes the bundle into <paramref name="folder"/> and returns the folder.</summary>
    public string WriteTo(string folder, string? schedulerConfigJson = null)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllBytes(Path.Combine(folder, ModelFolder.OnnxModel), BuildModel().ToByteArray());
        File.WriteAllText(Path.Combine(folder, ModelFolder.OnnxInfo), Info().ToJsonString());
        File.WriteAllText(Path.Combine(folder, ModelFolder.SchedulerConfig), schedulerConfigJson ?? DefaultSchedulerConfig);
        return folder;
    }

    /// <summary>onnx_model.json as <c>dprune export</c> writes it for this graph.</summary>
    public OnnxModelInfo Info()
    {
        var batch = OnnxDimension.Dynamic(OnnxBundle.BatchDim);
        var inputs = new List<OnnxTensorInfo>
        {
            new(OnnxBundle.SampleInput, OnnxTensorInfo.Float32, [batch, OnnxDimension.Fixed(Channels), OnnxDimension.Fixed(Size), OnnxDimension.Fixed(Size)]),
            new(OnnxBundle.TimestepInput, OnnxTensorInfo.Int64, [batch]),
        };
        if (NumClasses is not null) inputs.Add(new(OnnxBundle.ClassLabelsInput, OnnxTensorInfo.Int64, [batch]));
        return new OnnxModelInfo
        {
            Opset = 17,
            IrVersion = 8,
            ClassName = "TinyDenoiser",
            Inputs = inputs,
            Outputs = [new(OnnxBundle.Output, OnnxTensorInfo.Float32,
                [batch, OnnxDimension.Fixed(Channels + SigmaChannels), OnnxDimension.Fixed(Size), OnnxDimension.Fixed(Size)])],
            SampleSize = [Size, Size],
            InChannels = Channels,
            OutChannels = Channels + SigmaChannels,
            LearnedSigma = SigmaChannels > 0,
            NumClasses = NumClasses,
            NullClass = NullClass,
            Parameters = 1234,
            Macs = 5678,
        };
    }

    /// <summary>A DDIM config with clipping off, so the tiny graph's numbers pass through the scheduler unchanged.</summary>
    public const string DefaultSchedulerConfig = """
        {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
         "beta_schedule": "linear", "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1,
         "prediction_type": "epsilon", "timestep_spacing": "leading"}
        """;

    public ModelProto BuildModel()
    {
        var graph = new GraphProto { Name = "tiny_denoiser" };
        graph.Input.Add(TensorInfo("sample", TensorProto.Types.DataType.Float, Dim("batch"), Dim(Channels), Dim(Size), Dim(Size)));
        graph.Input.Add(TensorInfo("timestep", TensorProto.Types.DataType.Int64, Dim("batch")));
        if (NumClasses is not null)
            graph.Input.Add(TensorInfo("class_labels", TensorProto.Types.DataType.Int64, Dim("batch")));
        graph.Output.Add(TensorInfo("out_sample", TensorProto.Types.DataType.Float, Dim("batch"), Dim(Channels + SigmaChannels), Dim(Size), Dim(Size)));

        graph.Initializer.Add(FloatScalar("sample_scale", SampleScale));
        graph.Initializer.Add(FloatScalar("timestep_scale", TimestepScale));
        graph.Initializer.Add(Int64Vector("per_batch_shape", [-1, 1, 1, 1]));

        // 1. sample * 0.5
        graph.Node.Add(Node("Mul", ["sample", "sample_scale"], ["scaled"]));
        // 2. + float(timestep) * scale, broadcast from [batch] to [batch, 1, 1, 1]
        graph.Node.Add(Node("Cast", ["timestep"], ["timestep_float"], ToFloat()));
        graph.Node.Add(Node("Mul", ["timestep_float", "timestep_scale"], ["timestep_term"]));
        graph.Node.Add(Node("Reshape", ["timestep_term", "per_batch_shape"], ["timestep_broadcast"]));
        graph.Node.Add(Node("Add", ["scaled", "timestep_broadcast"], ["with_timestep"]));
        string prediction = "with_timestep";
        // 3. + float(class_labels) * scale
        if (NumClasses is not null)
        {
            graph.Initializer.Add(FloatScalar("label_scale", LabelScale));
            graph.Node.Add(Node("Cast", ["class_labels"], ["labels_float"], ToFloat()));
            graph.Node.Add(Node("Mul", ["labels_float", "label_scale"], ["label_term"]));
            graph.Node.Add(Node("Reshape", ["label_term", "per_batch_shape"], ["label_broadcast"]));
            graph.Node.Add(Node("Add", [prediction, "label_broadcast"], ["with_label"]));
            prediction = "with_label";
        }
        // 4. learned-sigma channels: a constant the runtime must drop
        if (SigmaChannels > 0)
        {
            if (SigmaChannels != Channels) throw new ArgumentException("The tiny graph's sigma has as many channels as the prediction.");
            graph.Initializer.Add(FloatScalar("zero", 0f));
            graph.Initializer.Add(FloatScalar("sigma_value", SigmaValue));
            graph.Node.Add(Node("Mul", [prediction, "zero"], ["zeros"]));
            graph.Node.Add(Node("Add", ["zeros", "sigma_value"], ["sigma"]));
            var concat = Node("Concat", [prediction, "sigma"], ["out_sample"]);
            concat.Attribute.Add(new AttributeProto { Name = "axis", Type = AttributeProto.Types.AttributeType.Int, I = 1 });
            graph.Node.Add(concat);
        }
        else
        {
            graph.Node.Add(Node("Identity", [prediction], ["out_sample"]));
        }

        var model = new ModelProto { IrVersion = 8, ProducerName = "DiffusionPrune.Tests", Graph = graph };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
        return model;
    }

    private static AttributeProto ToFloat() =>
        new() { Name = "to", Type = AttributeProto.Types.AttributeType.Int, I = (long)TensorProto.Types.DataType.Float };

    private static NodeProto Node(string op, string[] inputs, string[] outputs, params AttributeProto[] attributes)
    {
        var node = new NodeProto { OpType = op, Name = $"{op}_{outputs[0]}" };
        node.Input.AddRange(inputs);
        node.Output.AddRange(outputs);
        node.Attribute.AddRange(attributes);
        return node;
    }

    private static TensorShapeProto.Types.Dimension Dim(long value) => new() { DimValue = value };
    private static TensorShapeProto.Types.Dimension Dim(string name) => new() { DimParam = name };

    private static ValueInfoProto TensorInfo(string name, TensorProto.Types.DataType type, params TensorShapeProto.Types.Dimension[] dims)
    {
        var shape = new TensorShapeProto();
        shape.Dim.AddRange(dims);
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } },
        };
    }

    private static TensorProto FloatScalar(string name, float value)
    {
        var tensor = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float };
        tensor.FloatData.Add(value);
        return tensor;
    }

    private static TensorProto Int64Vector(string name, long[] values)
    {
        var tensor = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Int64 };
        tensor.Dims.Add(values.Length);
        tensor.Int64Data.AddRange(values);
        return tensor;
    }
}
