using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.OnnxGraphs;

/// <summary>
/// The layers our models share, written as opset-17 ONNX ops. Each method reads one live module (its weights
/// and the settings it was built with), so pruned widths and removed heads need nothing special: the exported
/// shapes are the module's own. Each mirrors the TorchSharp <c>forward</c> it names, op for op where the
/// ONNX op exists and with the documented decomposition where it does not (GroupNorm, SiLU, Mish, GELU).
/// </summary>
public static class OnnxLayers
{
    /// <summary>
    /// <see cref="Linear"/>: Gemm(x, W, b, transB=1) for a [B, in] input; for [B, N, in] MatMul with the
    /// transposed weight (stored as <c>{path}.weight_t</c>) then Add of the bias, as MatMul broadcasts over N.
    /// </summary>
    public static string Linear(OnnxGraph g, Linear linear, string x, string path, int inputRank)
    {
        var weight = linear.weight!;
        if (inputRank == 2)
        {
            var inputs = new List<string> { x, g.Weight($"{path}.weight", weight) };
            if (linear.bias is not null) inputs.Add(g.Weight($"{path}.bias", linear.bias));
            return g.Node("Gemm", path, inputs, ("transB", 1L));
        }
        using var transposed = weight.detach().t();
        var y = g.MatMul(path, x, g.Weight($"{path}.weight_t", transposed));
        return linear.bias is null ? y : g.Add(path, y, g.Weight($"{path}.bias", linear.bias));
    }

    /// <summary>
    /// <see cref="Conv2d"/> with its stride, padding, dilation and groups; <paramref name="extraEndPadding"/> adds
    /// rows/columns of zeros at the bottom/right (ONNX Conv pads may be asymmetric: [top, left, bottom, right]).
    /// </summary>
    public static string Conv(OnnxGraph g, Conv2d conv, string x, string path, long extraEndPadding = 0)
    {
        if (conv.padding_type is not null || conv.padding_mode != PaddingModes.Zeros)
            throw new OnnxExportException($"'{path}': only explicit zero padding is exported (got {conv.padding_type?.ToString() ?? conv.padding_mode.ToString()}).");
        long[] pad = conv.padding is null ? [0, 0] : Pair(conv.padding);
        var weight = conv.weight!;
        var inputs = new List<string> { x, g.Weight($"{path}.weight", weight) };
        if (conv.bias is not null) inputs.Add(g.Weight($"{path}.bias", conv.bias));
        return g.Node("Conv", path, inputs,
            ("kernel_shape", new[] { weight.shape[2], weight.shape[3] }),
            ("strides", Pair(conv.stride)),
            ("dilations", Pair(conv.dilation)),
            ("group", conv.groups),
            ("pads", new[] { pad[0], pad[1], pad[0] + extraEndPadding, pad[1] + extraEndPadding }));
    }

    private static long[] Pair(long[] v) => v.Length == 1 ? [v[0], v[0]] : v;

    /// <summary>
    /// <see cref="TorchSharp.Modules.GroupNorm"/> on [B, C, ...] without opset 18's GroupNormalization: Reshape to
    /// [B, G, -1], InstanceNormalization (scale 1, bias 0: per-group mean and biased variance, as GroupNorm),
    /// Reshape back to the input's shape, then the per-channel affine as Mul/Add with [C, 1, 1] tensors.
    /// </summary>
    public static string GroupNorm(OnnxGraph g, TorchSharp.Modules.GroupNorm norm, string x, string path)
    {
        long groups = norm.num_groups;
        long channels = norm.weight?.shape[0] ?? throw new OnnxExportException($"'{path}': GroupNorm without affine weights is not used by our models.");
        var grouped = g.Reshape(path, x, 0, groups, -1);
        var ones = g.Floats(Enumerable.Repeat(1f, (int)groups).ToArray(), groups);
        var zeros = g.Floats(new float[groups], groups);
        var normalized = g.Node("InstanceNormalization", path, [grouped, ones, zeros], ("epsilon", (float)norm.eps));
        normalized = g.Reshape(path, normalized, g.Shape(path, x));
        var scaled = g.Mul(path, normalized, g.Weight($"{path}.weight", norm.weight, [channels, 1, 1]));
        return g.Add(path, scaled, g.Weight($"{path}.bias", norm.bias!, [channels, 1, 1]));
    }

    /// <summary>
    /// LayerNorm over the last axis (LayerNormalization, opset 17). Our DiT's norms without affine get a
    /// constant scale of ones (the op requires one) and no bias.
    /// </summary>
    public static string LayerNorm(OnnxGraph g, string x, string path, long dim, double eps, Tensor? weight = null, Tensor? bias = null)
    {
        var inputs = new List<string>
        {
            x,
            weight is null ? g.Floats(Enumerable.Repeat(1f, (int)dim).ToArray(), dim) : g.Weight($"{path}.weight", weight),
        };
        if (bias is not null) inputs.Add(g.Weight($"{path}.bias", bias));
        return g.Node("LayerNormalization", path, inputs, ("axis", -1L), ("epsilon", (float)eps));
    }

    /// <summary>
    /// <see cref="Activations.Apply"/> (opset 17 has no SiLU, Mish or GELU op): silu/swish = x·Sigmoid(x);
    /// mish = x·Tanh(Softplus(x)); gelu = 0.5·x·(1 + Erf(x/√2)); relu = Relu.
    /// </summary>
    public static string Activation(OnnxGraph g, string name, string x, string path) => name switch
    {
        "silu" or "swish" => g.Mul(path, x, g.Sigmoid(path, x)),
        "mish" => g.Mul(path, x, g.Tanh(path, g.Node("Softplus", path, [x]))),
        "gelu" => Gelu(g, x, path, approximateTanh: false),
        "relu" => g.Node("Relu", path, [x]),
        _ => throw new OnnxExportException($"'{path}': activation '{name}' has no ONNX mapping ({string.Join(", ", Activations.Known)})."),
    };

    /// <summary>
    /// GELU as PyTorch computes it: exact 0.5·x·(1 + Erf(x·(1/√2))), or with approximate='tanh'
    /// 0.5·x·(1 + Tanh(√(2/π)·(x + 0.044715·x³))).
    /// </summary>
    public static string Gelu(OnnxGraph g, string x, string path, bool approximateTanh)
    {
        string inner;
        if (approximateTanh)
        {
            var cube = g.Mul(path, g.Mul(path, x, x), x);
            var poly = g.Add(path, x, g.Mul(path, cube, g.Scalar(0.044715f)));
            inner = g.Tanh(path, g.Mul(path, poly, g.Scalar((float)Math.Sqrt(2 / Math.PI))));
        }
        else
        {
            inner = g.Node("Erf", path, [g.Mul(path, x, g.Scalar((float)(1 / Math.Sqrt(2))))]);
        }
        var half = g.Mul(path, x, g.Scalar(0.5f));
        return g.Mul(path, half, g.Add(path, inner, g.Scalar(1f)));
    }

    /// <summary><see cref="TimestepFeatures.Sinusoidal"/> of a float [B] vector: [B, dim].</summary>
    public static string Sinusoidal(OnnxGraph g, string timesteps, int dim, bool flipSinToCos, double shift, string path)
    {
        int half = dim / 2;
        using var frequencies = TimestepFeatures.Frequencies(dim, shift);
        var table = g.Floats(frequencies.data<float>().ToArray(), 1, half);
        var arguments = g.Mul(path, g.Unsqueeze(path, timesteps, 1), table); // [B, half]
        var sin = g.Node("Sin", path, [arguments]);
        var cos = g.Node("Cos", path, [arguments]);
        var emb = flipSinToCos ? g.Concat(path, -1, cos, sin) : g.Concat(path, -1, sin, cos);
        if (dim % 2 == 1)
            emb = g.Node("Pad", path, [emb, g.Ints(0, 0, 0, 1)], ("mode", "constant"));
        return emb;
    }

    /// <summary><see cref="GaussianFourierProjection"/> of a float [B] vector: [B, 2·size].</summary>
    public static string GaussianFourier(OnnxGraph g, GaussianFourierProjection projection, string timesteps, string path)
    {
        var t = projection.Log ? g.Node("Log", path, [timesteps]) : timesteps;
        var weight = projection.Weight;
        var arguments = g.Mul(path, g.Mul(path, g.Unsqueeze(path, t, 1), g.Weight($"{path}.weight", weight, [1, weight.shape[0]])),
            g.Scalar((float)(2 * Math.PI)));
        var sin = g.Node("Sin", path, [arguments]);
        var cos = g.Node("Cos", path, [arguments]);
        return projection.FlipSinToCos ? g.Concat(path, -1, cos, sin) : g.Concat(path, -1, sin, cos);
    }

    /// <summary><see cref="TimestepEmbedding"/>: Gemm, activation, Gemm on [B, in], then the post activation if it has one (timestep_post_act).</summary>
    public static string TimestepEmbedding(OnnxGraph g, TimestepEmbedding embedding, string x, string path)
    {
        var h = Linear(g, embedding.Linear1, x, $"{path}.linear_1", 2);
        h = Activation(g, embedding.Act, h, $"{path}.linear_1");
        h = Linear(g, embedding.Linear2, h, $"{path}.linear_2", 2);
        return embedding.PostAct is null ? h : Activation(g, embedding.PostAct, h, $"{path}.post_act");
    }

    /// <summary>An embedding table lookup (Gather on axis 0) of int64 indices.</summary>
    public static string Embedding(OnnxGraph g, Embedding embedding, string indices, string path) =>
        g.Node("Gather", path, [g.Weight($"{path}.weight", embedding.weight!), indices], ("axis", 0L));

    /// <summary>
    /// <see cref="Models.Layers.Attention"/> (self-attention, scaled dot product). Spatial input [B, C, H, W] is
    /// flattened to [B, H·W, C] after the optional GroupNorm (GroupNorm per channel is the same on either
    /// layout) and restored at the end. q, k, v: [B, heads, N, d]; softmax(q·kᵀ/√d)·v, heads merged, to_out,
    /// then the residual and the output rescale. Heads and head width are the module's, so pruned heads export as is.
    /// With <paramref name="encoderHiddenStates"/> [B, T, cross_attention_dim], keys and values are projected from it
    /// (Stable Diffusion's attn2 attending to the text) rather than from <paramref name="x"/>.
    /// </summary>
    public static string Attention(OnnxGraph g, Models.Layers.Attention attention, string x, string path, bool spatial, string? encoderHiddenStates = null)
    {
        if (attention.HeadGate is not null || attention.LayerGate is not null)
            throw new OnnxExportException($"'{path}' carries mask-learning gates; clear them (MaskedModel.ClearAll) or apply the plan with StructuralSurgery before export.");
        var residual = x;
        string h = x;
        if (attention.GroupNormModule is { } norm)
            h = GroupNorm(g, norm, h, $"{path}.group_norm");
        if (spatial)
            h = g.Transpose(path, g.Reshape(path, h, 0, 0, -1), 0, 2, 1); // [B, C, H, W] -> [B, N, C]

        long heads = attention.Heads, dimHead = attention.DimHead;
        string Project(Linear linear, string name, string source, params long[] perm)
        {
            var projected = Linear(g, linear, source, $"{path}.{name}", 3);
            return g.Transpose($"{path}.{name}", g.Reshape($"{path}.{name}", projected, 0, 0, heads, dimHead), perm);
        }
        var keySource = encoderHiddenStates ?? h;
        var query = Project(attention.ToQ, "to_q", h, 0, 2, 1, 3);         // [B, heads, N, d]
        var keyT = Project(attention.ToK, "to_k", keySource, 0, 2, 3, 1);  // [B, heads, d, T]
        var value = Project(attention.ToV, "to_v", keySource, 0, 2, 1, 3); // [B, heads, T, d]
        var scores = g.Mul(path, g.MatMul(path, query, keyT), g.Scalar((float)(1 / Math.Sqrt(dimHead))));
        var probabilities = g.Node("Softmax", path, [scores], ("axis", -1L));
        var attended = g.MatMul(path, probabilities, value);        // [B, heads, N, d]
        attended = g.Reshape(path, g.Transpose(path, attended, 0, 2, 1, 3), 0, 0, heads * dimHead);
        var output = Linear(g, attention.ToOut, attended, $"{path}.to_out.0", 3); // [B, N, C]

        if (spatial)
            output = g.Reshape(path, g.Transpose(path, output, 0, 2, 1), g.Shape(path, x));
        if (attention.ResidualConnection)
            output = g.Add(path, output, residual);
        if (attention.RescaleOutputFactor != 1.0)
            output = g.Div(path, output, g.Scalar((float)attention.RescaleOutputFactor));
        return output;
    }

    /// <summary>
    /// <see cref="ResnetBlock2D"/> (eval: no dropout). <paramref name="activatedTemb"/> is act(temb), shared by
    /// every block with the same activation. Up/down sampling blocks resize both paths (Resize nearest 2x /
    /// AveragePool 2x2); the time embedding is added after conv1, or applied as scale/shift after norm2.
    /// </summary>
    public static string ResnetBlock(OnnxGraph g, ResnetBlock2D block, string x, string? activatedTemb, string path)
    {
        if (block.ChannelGate is not null || block.LayerGate is not null)
            throw new OnnxExportException($"'{path}' carries mask-learning gates; clear them (MaskedModel.ClearAll) or apply the plan with StructuralSurgery before export.");
        var input = x;
        var h = Activation(g, block.Act, GroupNorm(g, block.Norm1Module, x, $"{path}.norm1"), $"{path}.norm1");
        if (block.Up)
        {
            input = Nearest2x(g, input, path);
            h = Nearest2x(g, h, path);
        }
        else if (block.Down)
        {
            input = AveragePool2x(g, input, path);
            h = AveragePool2x(g, h, path);
        }
        h = Conv(g, block.Conv1Module, h, $"{path}.conv1");

        string? projected = null;
        if (block.TimeEmbProjModule is { } proj && activatedTemb is not null)
            projected = Linear(g, proj, activatedTemb, $"{path}.time_emb_proj", 2);

        if (block.TimeEmbeddingNorm == "scale_shift")
        {
            if (projected is null) throw new OnnxExportException($"'{path}': a scale_shift ResNet block needs a time embedding.");
            long inner = block.InnerChannels;
            var halves = g.Split($"{path}.time_emb_proj", projected, 1, inner, inner);
            var scale = g.Unsqueeze(path, halves[0], 2, 3);
            var shift = g.Unsqueeze(path, halves[1], 2, 3);
            h = GroupNorm(g, block.Norm2Module, h, $"{path}.norm2");
            h = g.Add(path, g.Mul(path, h, g.Add(path, scale, g.Scalar(1f))), shift);
        }
        else
        {
            if (projected is not null) h = g.Add(path, h, g.Unsqueeze(path, projected, 2, 3));
            h = GroupNorm(g, block.Norm2Module, h, $"{path}.norm2");
        }
        h = Activation(g, block.Act, h, $"{path}.norm2");
        h = Conv(g, block.Conv2Module, h, $"{path}.conv2");

        if (block.ConvShortcutModule is { } shortcut)
            input = Conv(g, shortcut, input, $"{path}.conv_shortcut");
        var output = g.Add(path, input, h);
        if (block.OutputScaleFactor != 1.0)
            output = g.Div(path, output, g.Scalar((float)block.OutputScaleFactor));
        return output;
    }

    /// <summary><see cref="Resampling.Nearest2x"/>: Resize nearest, asymmetric coordinates, floor — output pixel i reads input i/2.</summary>
    public static string Nearest2x(OnnxGraph g, string x, string path) =>
        g.Node("Resize", path, [x, "", g.Floats([1f, 1f, 2f, 2f], 4)],
            ("mode", "nearest"), ("coordinate_transformation_mode", "asymmetric"), ("nearest_mode", "floor"));

    /// <summary>avg_pool2d(kernel 2, stride 2), no padding.</summary>
    public static string AveragePool2x(OnnxGraph g, string x, string path) =>
        g.Node("AveragePool", path, [x], ("kernel_shape", new long[] { 2, 2 }), ("strides", new long[] { 2, 2 }));

    /// <summary>Casts an int64 value to float32 (TorchSharp's to_type(Float32)).</summary>
    public static string ToFloat(OnnxGraph g, string x, string path) => g.Node("Cast", path, [x], ("to", (long)DataType.Float));
}
