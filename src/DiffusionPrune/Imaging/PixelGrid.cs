// TorchSharp-free: samples/OnDeviceDemo compiles this file. Use only the BCL and ImageSharp here.
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace DiffusionPrune.Imaging;

/// <summary>Tiles a batch of images in [-1, 1], given as a float array [N, C, H, W], into one 8-bit picture.</summary>
public static class PixelGrid
{
    /// <param name="images">[N, C, H, W] row-major, C = 1 or 3, values in [-1, 1] (clamped).</param>
    /// <param name="shape">The images' shape (4 entries).</param>
    /// <param name="columns">Images per row; default: the smallest square that holds N.</param>
    /// <param name="padding">Pixels of mid-grey between tiles.</param>
    /// <param name="scale">Each pixel becomes a scale x scale block.</param>
    /// <returns>Interleaved pixels (row-major, channels last): grey (L8) or RGB (Rgb24).</returns>
    public static (byte[] pixels, int width, int height, int channels) Tile(float[] images, int[] shape, int? columns = null, int padding = 2, int scale = 1)
    {
        if (shape.Length != 4) throw new ArgumentException("images must be [N, C, H, W].", nameof(shape));
        int n = shape[0], c = shape[1], h = shape[2], w = shape[3];
        if (c is not (1 or 3)) throw new ArgumentException($"Images with {c} channels cannot be shown; only 1 or 3.");
        if (images.Length != n * c * h * w) throw new ArgumentException($"{images.Length} values do not make [{string.Join(", ", shape)}].", nameof(images));
        if (scale < 1) throw new ArgumentOutOfRangeException(nameof(scale), "scale must be at least 1.");
        int th = h * scale, tw = w * scale;
        int cols = columns ?? (int)Math.Ceiling(Math.Sqrt(n));
        int rows = (n + cols - 1) / cols;
        int width = cols * tw + (cols + 1) * padding, height = rows * th + (rows + 1) * padding;
        var pixels = new byte[width * height * c];
        Array.Fill(pixels, (byte)128);
        for (int i = 0; i < n; i++)
        {
            int top = padding + (i / cols) * (th + padding), left = padding + (i % cols) * (tw + padding);
            for (int y = 0; y < th; y++)
            for (int x = 0; x < tw; x++)
            for (int ch = 0; ch < c; ch++)
            {
                float value = images[((i * c + ch) * h + y / scale) * w + x / scale];
                pixels[((top + y) * width + left + x) * c + ch] = ToByte(value);
            }
        }
        return (pixels, width, height, c);
    }

    public static void Save(string path, float[] images, int[] shape, int? columns = null, int padding = 2, int scale = 1)
    {
        var (pixels, width, height, channels) = Tile(images, shape, columns, padding, scale);
        WritePng(path, pixels, width, height, channels);
    }

    /// <summary>Encodes interleaved 8-bit pixels (1 channel grey, 3 RGB) as a PNG with ImageSharp.</summary>
    public static void WritePng(string path, byte[] pixels, int width, int height, int channels)
    {
        if (Path.GetDirectoryName(Path.GetFullPath(path)) is { } folder) Directory.CreateDirectory(folder);
        using var image = ToImage(pixels, width, height, channels);
        image.SaveAsPng(path);
    }

    /// <summary>The PNG file's bytes of interleaved 8-bit pixels (1 channel grey, 3 RGB): for previews sent to a page.</summary>
    public static byte[] EncodePng(byte[] pixels, int width, int height, int channels)
    {
        using var image = ToImage(pixels, width, height, channels);
        using var stream = new MemoryStream();
        image.SaveAsPng(stream);
        return stream.ToArray();
    }

    private static Image ToImage(byte[] pixels, int width, int height, int channels) => channels switch
    {
        1 => Image.LoadPixelData<L8>(pixels, width, height),
        3 => Image.LoadPixelData<Rgb24>(pixels, width, height),
        _ => throw new ArgumentException($"PNG pictures here have 1 or 3 channels, not {channels}.", nameof(channels)),
    };

    /// <summary>[-1, 1] -> 0..255 as <c>((x.clamp(-1, 1) + 1) * 127.5).round()</c> in float32 (round half to even, as torch).</summary>
    public static byte ToByte(float value) =>
        (byte)MathF.Round((Math.Clamp(value, -1f, 1f) + 1f) * 127.5f, MidpointRounding.ToEven);
}
