using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Imaging;

/// <summary>Tiles a batch of image tensors in [-1, 1] into one picture (the pixel work is <see cref="PixelGrid"/>'s).</summary>
public static class ImageGrid
{
    /// <param name="images">[N, C, H, W] with C = 1 or 3, values in [-1, 1] (clamped).</param>
    /// <param name="columns">Images per row; default: the smallest square that holds N.</param>
    /// <param name="padding">Pixels of mid-grey between tiles.</param>
    public static (byte[] pixels, int width, int height, int channels) Tile(Tensor images, int? columns = null, int padding = 2, int scale = 1)
    {
        if (images.dim() != 4) throw new ArgumentException("images must be [N, C, H, W].");
        using var scope = NewDisposeScope();
        var x = images.detach().cpu().to_type(ScalarType.Float32).contiguous();
        return PixelGrid.Tile(x.data<float>().ToArray(), x.shape.Select(s => (int)s).ToArray(), columns, padding, scale);
    }

    /// <summary>The grid as PNG bytes (a preview image), with its size.</summary>
    public static (byte[] png, int width, int height) Png(Tensor images, int? columns = null, int padding = 2, int scale = 1)
    {
        var (pixels, width, height, channels) = Tile(images, columns, padding, scale);
        return (PixelGrid.EncodePng(pixels, width, height, channels), width, height);
    }

    public static void Save(string path, Tensor images, int? columns = null, int padding = 2, int scale = 1)
    {
        var (pixels, width, height, channels) = Tile(images, columns, padding, scale);
        PixelGrid.WritePng(path, pixels, width, height, channels);
    }
}
