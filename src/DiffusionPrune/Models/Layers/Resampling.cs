using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models.Layers;

public static class Resampling
{
    /// <summary>Nearest-neighbour 2x upsampling (F.interpolate(scale_factor=2, mode="nearest")).</summary>
    public static Tensor Nearest2x(Tensor x) => x.repeat_interleave(2, 2).repeat_interleave(2, 3);
}

/// <summary>diffusers' <c>Downsample2D</c> with a strided conv (name "op" stores it as <c>conv</c>).</summary>
public sealed class Downsample2D : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv;
    private readonly int _padding;

    public Downsample2D(int channels, int outChannels, int padding) : base(nameof(Downsample2D))
    {
        conv = nn.Conv2d(channels, outChannels, 3, stride: 2, padding: padding);
        _padding = padding;
        RegisterComponents();
    }

    public Conv2d Conv => conv;

    /// <summary>The conv's padding; 0 means diffusers' extra right/bottom pad of one.</summary>
    public int Padding => _padding;

    public override Tensor forward(Tensor hiddenStates)
    {
        // diffusers pads right and bottom by one when padding is 0, so odd sizes round the same way.
        if (_padding == 0)
            hiddenStates = nn.functional.pad(hiddenStates, [0, 1, 0, 1], PaddingModes.Constant, 0);
        return conv.call(hiddenStates);
    }
}

/// <summary>diffusers' <c>Upsample2D</c>: nearest 2x, then a 3x3 conv.</summary>
public sealed class Upsample2D : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv;

    public Upsample2D(int channels, int outChannels) : base(nameof(Upsample2D))
    {
        conv = nn.Conv2d(channels, outChannels, 3, stride: 1, padding: 1);
        RegisterComponents();
    }

    public Conv2d Conv => conv;

    public override Tensor forward(Tensor hiddenStates) => conv.call(Resampling.Nearest2x(hiddenStates));
}
