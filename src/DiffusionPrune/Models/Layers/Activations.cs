using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Models.Layers;

/// <summary>diffusers' <c>get_activation</c>: the activation names a config may use.</summary>
public static class Activations
{
    public static readonly string[] Known = ["silu", "swish", "mish", "gelu", "relu"];

    public static void Validate(string name, string source)
    {
        if (!Known.Contains(name))
            throw new ModelFormatException($"{source}: activation '{name}' is not supported ({string.Join(", ", Known)}).");
    }

    public static Tensor Apply(string name, Tensor x) => name switch
    {
        "silu" or "swish" => nn.functional.silu(x),
        "mish" => nn.functional.mish(x),
        "gelu" => nn.functional.gelu(x),
        "relu" => nn.functional.relu(x),
        _ => throw new ModelFormatException($"activation '{name}' is not supported ({string.Join(", ", Known)})."),
    };
}

/// <summary>Small factories that fix TorchSharp defaults which differ from PyTorch.</summary>
public static class LayerFactory
{
    /// <summary>TorchSharp's GroupNorm leaves weight and bias uninitialised; PyTorch sets them to 1 and 0.</summary>
    public static TorchSharp.Modules.GroupNorm GroupNorm(int groups, int channels, double eps)
    {
        var norm = nn.GroupNorm(groups, channels, eps, affine: true);
        using (no_grad())
        {
            norm.weight!.fill_(1.0f);
            norm.bias!.fill_(0.0f);
        }
        return norm;
    }
}
