using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Imaging;

/// <summary>Tiles a batch of images in [-1, 1] into one picture.</summary>
public static class ImageGrid
{
    /// <param name="images">[N, C, H, W] with C = 1 or 3, values in [-1, 1] (clamped).</param>
    /// <param name="columns">Images per row; default: the smallest square that holds N.</param>
    /// <param name="padding">Pixels of mid-grey between tiles.</param>
    public static (byte[] pixels, int width, int height, int channels) Tile(Tensor images, int? columns = null, int padding = 2, int scale = 1)
    {
        using var scope = NewDisposeScope();
        var x = images.detach().cpu().to_type(ScalarType.Float32);
        if (x.dim() != 4) throw new ArgumentException("images must be [N, C, H, W].");
        int n = (int)x.shape[0], c = (int)x.shape[1], h = (int)x.shape[2], w = (int)x.shape[3];
        if (c is not (1 or 3)) throw new ArgumentException($"Images with {c} channels cannot be shown; only 1 or 3.");
        if (scale > 1) x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3);
        h *= scale; w *= scale;
        int cols = columns ?? (int)Math.Ceiling(Math.Sqrt(n));
        int rows = (n + cols - 1) / cols;
        int width = cols * w + (cols + 1) * padding, height = rows * h + (rows + 1) * padding;
        var bytes = ((x.clamp(-1, 1) + 1) * 127.5f).round().to_type(ScalarType.Byte).permute(0, 2, 3, 1).contiguous();
        var data = bytes.data<byte>().ToArray();
        var pixels = new byte[width * height * c];
        Array.Fill(pixels, (byte)128);
        for (int i = 0; i < n; i++)
        {
            int top = padding + (i / cols) * (h + padding), left = padding + (i % cols) * (w + padding);
            for (int y = 0; y < h; y++)
                Array.Copy(data, ((long)i * h * w + (long)y * w) * c, pixels, ((long)(top + y) * width + left) * c, (long)w * c);
        }
        return (pixels, width, height, c);
    }

    public static void Save(string path, Tensor images, int? columns = null, int padding = 2, int scale = 1)
    {
        var (pixels, width, height, channels) = Tile(images, columns, padding, scale);
        PngWriter.Write(path, pixels, width, height, channels);
    }
}
