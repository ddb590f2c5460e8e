using System.Runtime.InteropServices;
using Google.Protobuf;
using Onnx;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.OnnxGraphs;

/// <summary>The model would not fit one ONNX protobuf file, or holds something the exporter cannot express.</summary>
public sealed class OnnxExportException(string message) : Exception(message);

/// <summary>
/// Builds one ONNX graph (default domain, <see cref="Opset"/>) op by op with the protobuf classes. Every method
/// adds one node (or an initializer) and returns the name of the value it produces; values are named
/// <c>{scope}/{op}_{n}</c> after the module path that made them, so the graph reads like the state dict.
/// Weights become float32 initializers named by their state-dict key. Initializer bytes are counted as they
/// are added so an export that would pass protobuf's 2 GB limit fails early with a clear message.
/// </summary>
public sealed class OnnxGraph
{
    public const int Opset = 17;

    /// <summary>IR version 8 is the one that introduced opset 17 (ONNX 1.12); every runtime that reads opset 17 reads it.</summary>
    public const long IrVersion = 8;

    /// <summary>Protobuf refuses messages of 2 GiB or more.</summary>
    public const long ProtobufLimitBytes = int.MaxValue;

    private readonly GraphProto _graph = new();
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _constants = new(StringComparer.Ordinal);
    private readonly HashSet<string> _weights = new(StringComparer.Ordinal);
    private readonly long _maxBytes;
    private int _counter;

    /// <param name="name">The graph's name.</param>
    /// <param name="maxBytes">Largest model the graph may grow to (initializer bytes plus a margin for the nodes).</param>
    public OnnxGraph(string name, long maxBytes = ProtobufLimitBytes)
    {
        _graph.Name = name;
        _maxBytes = maxBytes;
    }

    /// <summary>Bytes of initializer data added so far.</summary>
    public long InitializerBytes { get; private set; }

    // ---- graph inputs, outputs, initializers ----

    /// <summary>Declares a graph input; a dimension is a fixed size (int/long) or a symbolic name (string).</summary>
    public string Input(string name, DataType type, params object[] dims)
    {
        Claim(name);
        _graph.Input.Add(ValueInfo(name, type, dims));
        return name;
    }

    /// <summary>Makes <paramref name="value"/> a graph output called <paramref name="name"/> (through an Identity node when renamed).</summary>
    public void Output(string value, string name, DataType type, params object[] dims)
    {
        if (value != name)
        {
            Claim(name);
            var node = new NodeProto { OpType = "Identity", Name = name };
            node.Input.Add(value);
            node.Output.Add(name);
            _graph.Node.Add(node);
        }
        _graph.Output.Add(ValueInfo(name, type, dims));
    }

    /// <summary>
    /// A float32 initializer holding <paramref name="values"/> (copied to the CPU), optionally viewed with other dims.
    /// A name already added returns the same initializer (a module read twice, e.g. a shared time projection).
    /// </summary>
    public string Weight(string name, Tensor values, long[]? dims = null)
    {
        if (_weights.Contains(name)) return name;
        using var scope = NewDisposeScope();
        var cpu = values.detach().to_type(ScalarType.Float32).cpu().contiguous();
        var data = cpu.data<float>().ToArray();
        long[] shape = dims ?? cpu.shape;
        if (shape.Aggregate(1L, (a, b) => a * b) != data.Length)
            throw new InvalidOperationException($"Initializer '{name}': {data.Length} values do not fill shape [{string.Join(", ", shape)}].");
        Initializer(name, DataType.Float, shape, MemoryMarshal.AsBytes(data.AsSpan()));
        _weights.Add(name);
        return name;
    }

    /// <summary>A float32 constant (deduplicated by value: the same numbers and shape give the same initializer).</summary>
    public string Floats(float[] values, params long[] dims)
    {
        string key = "f:" + string.Join(",", dims) + ":" + Convert.ToBase64String(MemoryMarshal.AsBytes(values.AsSpan()));
        if (_constants.TryGetValue(key, out var existing)) return existing;
        string name = Free($"const/f{_constants.Count}");
        Initializer(name, DataType.Float, dims, MemoryMarshal.AsBytes(values.AsSpan()));
        return _constants[key] = name;
    }

    public string Scalar(float value) => Floats([value]);

    /// <summary>An int64 constant (shapes, axes, split sizes), deduplicated by value.</summary>
    public string Ints(params long[] values)
    {
        string key = "i:" + string.Join(",", values);
        if (_constants.TryGetValue(key, out var existing)) return existing;
        string name = Free($"const/i{_constants.Count}");
        Initializer(name, DataType.Int64, [values.Length], MemoryMarshal.AsBytes(values.AsSpan()));
        return _constants[key] = name;
    }

    private string Initializer(string name, DataType type, long[] dims, ReadOnlySpan<byte> littleEndianData)
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("ONNX raw_data is little-endian; this exporter only runs on little-endian machines.");
        Claim(name);
        InitializerBytes += littleEndianData.Length;
        // Nodes and names of our models take well under a megabyte per thousand layers; 64 MiB leaves room.
        const long graphMargin = 64L << 20;
        if (InitializerBytes + graphMargin > _maxBytes)
            throw new OnnxExportException(
                $"The ONNX model would exceed {_maxBytes / (double)(1L << 30):F2} GiB ({InitializerBytes:N0} bytes of weights so far), " +
                "over protobuf's 2 GB limit for a single model.onnx. This exporter does not write external data: export a smaller " +
                "(pruned) model, or use --format safetensors.");
        var tensor = new TensorProto { Name = name, DataType = (int)type, RawData = ByteString.CopyFrom(littleEndianData) };
        tensor.Dims.Add(dims);
        _graph.Initializer.Add(tensor);
        return name;
    }

    // ---- nodes ----

    /// <summary>Adds one node with a single output named after <paramref name="scope"/>.</summary>
    public string Node(string opType, string scope, IEnumerable<string> inputs, params (string name, object value)[] attributes) =>
        Nodes(opType, scope, inputs, 1, attributes)[0];

    /// <summary>Adds one node with <paramref name="outputs"/> outputs. An input of "" is an omitted optional input.</summary>
    public string[] Nodes(string opType, string scope, IEnumerable<string> inputs, int outputs, params (string name, object value)[] attributes)
    {
        string baseName = Unique($"{scope}/{opType}");
        var node = new NodeProto { OpType = opType, Name = baseName };
        node.Input.Add(inputs);
        var names = new string[outputs];
        for (int i = 0; i < outputs; i++)
        {
            names[i] = outputs == 1 ? baseName : Unique($"{baseName}:{i}");
            node.Output.Add(names[i]);
        }
        foreach (var (name, value) in attributes)
            node.Attribute.Add(Attribute(name, value));
        _graph.Node.Add(node);
        return names;
    }

    public string Add(string scope, string a, string b) => Node("Add", scope, [a, b]);
    public string Sub(string scope, string a, string b) => Node("Sub", scope, [a, b]);
    public string Mul(string scope, string a, string b) => Node("Mul", scope, [a, b]);
    public string Div(string scope, string a, string b) => Node("Div", scope, [a, b]);
    public string MatMul(string scope, string a, string b) => Node("MatMul", scope, [a, b]);
    public string Sigmoid(string scope, string x) => Node("Sigmoid", scope, [x]);
    public string Tanh(string scope, string x) => Node("Tanh", scope, [x]);

    /// <summary>Reshape to <paramref name="shape"/>; 0 copies the input's dimension (keeps the batch dynamic), -1 infers one.</summary>
    public string Reshape(string scope, string x, params long[] shape) => Node("Reshape", scope, [x, Ints(shape)]);
    public string Reshape(string scope, string x, string shapeValue) => Node("Reshape", scope, [x, shapeValue]);
    public string Shape(string scope, string x) => Node("Shape", scope, [x]);
    public string Transpose(string scope, string x, params long[] perm) => Node("Transpose", scope, [x], ("perm", perm));
    public string Unsqueeze(string scope, string x, params long[] axes) => Node("Unsqueeze", scope, [x, Ints(axes)]);
    public string Concat(string scope, long axis, params string[] inputs) => Node("Concat", scope, inputs, ("axis", axis));

    /// <summary>Splits along <paramref name="axis"/> into pieces of the given sizes (opset 13+: sizes as an input).</summary>
    public string[] Split(string scope, string x, long axis, params long[] sizes) =>
        Nodes("Split", scope, [x, Ints(sizes)], sizes.Length, ("axis", axis));

    // ---- protobuf plumbing ----

    /// <summary>The finished model: IR <see cref="IrVersion"/>, default domain at <see cref="Opset"/>.</summary>
    public ModelProto ToModel(string producerVersion, string docString, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var model = new ModelProto
        {
            IrVersion = IrVersion,
            ProducerName = "DiffusionPrune",
            ProducerVersion = producerVersion,
            DocString = docString,
            Graph = _graph,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        if (metadata is not null)
            foreach (var (k, v) in metadata)
                model.MetadataProps.Add(new StringStringEntryProto { Key = k, Value = v });
        return model;
    }

    private void Claim(string name)
    {
        if (!_names.Add(name)) throw new InvalidOperationException($"ONNX value name '{name}' is used twice.");
    }

    /// <summary>A name not used yet, claimed.</summary>
    private string Unique(string stem)
    {
        string name = Free(stem);
        _names.Add(name);
        return name;
    }

    /// <summary>A name not used yet, not claimed (the caller claims it).</summary>
    private string Free(string stem)
    {
        string name = stem;
        while (_names.Contains(name)) name = $"{stem}_{++_counter}";
        return name;
    }

    private static ValueInfoProto ValueInfo(string name, DataType type, object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
        {
            shape.Dim.Add(d switch
            {
                string symbol => new TensorShapeProto.Types.Dimension { DimParam = symbol },
                int n => new TensorShapeProto.Types.Dimension { DimValue = n },
                long n => new TensorShapeProto.Types.Dimension { DimValue = n },
                _ => throw new ArgumentException($"Dimension {d} of '{name}' must be a size or a name."),
            });
        }
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } },
        };
    }

    private static AttributeProto Attribute(string name, object value)
    {
        var a = new AttributeProto { Name = name };
        switch (value)
        {
            case int i: a.Type = AttributeProto.Types.AttributeType.Int; a.I = i; break;
            case long l: a.Type = AttributeProto.Types.AttributeType.Int; a.I = l; break;
            case float f: a.Type = AttributeProto.Types.AttributeType.Float; a.F = f; break;
            case double d: a.Type = AttributeProto.Types.AttributeType.Float; a.F = (float)d; break;
            case string s: a.Type = AttributeProto.Types.AttributeType.String; a.S = ByteString.CopyFromUtf8(s); break;
            case long[] ls: a.Type = AttributeProto.Types.AttributeType.Ints; a.Ints.Add(ls); break;
            case int[] xs: a.Type = AttributeProto.Types.AttributeType.Ints; a.Ints.Add(xs.Select(x => (long)x)); break;
            case float[] fs: a.Type = AttributeProto.Types.AttributeType.Floats; a.Floats.Add(fs); break;
            default: throw new ArgumentException($"Attribute '{name}' has an unsupported type {value.GetType().Name}.");
        }
        return a;
    }
}
