using DiffusionPrune.Imaging;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Imaging;

/// <summary>The TorchSharp-free grid (shared with the on-device demo) and the tensor grid built on it.</summary>
public class PixelGridTests
{
    [Fact]
    public void Tiles_scales_and_maps_minus_one_to_one_onto_bytes_rounding_half_to_even()
    {
        // Two 1 x 1 x 2 images, two columns, one pixel of padding, scale 2.
        float[] images = [-1f, 0f, 1f, 2f];
        var (pixels, width, height, channels) = PixelGrid.Tile(images, [2, 1, 1, 2], columns: 2, padding: 1, scale: 2);

        Assert.Equal((2 * 4 + 3, 2 + 2, 1), (width, height, channels));
        byte[] row = pixels[(1 * width)..(2 * width)];
        // padding, image 0 (-1 -1 0 0 -> 0 0 128 128), padding, image 1 (1 1 2 2 -> 255 ...), padding
        Assert.Equal(new byte[] { 128, 0, 0, 128, 128, 128, 255, 255, 255, 255, 128 }, row);
        Assert.Equal(pixels[(1 * width)..(2 * width)], pixels[(2 * width)..(3 * width)]);
        Assert.All(pixels[..width], p => Assert.Equal(128, p));
    }

    [Fact]
    public void The_tensor_grid_equals_the_array_grid_of_the_same_values()
    {
        var images = randn(5, 3, 4, 6, generator: new TorchSharp.torch.Generator(2));
        var fromTensor = ImageGrid.Tile(images, padding: 2, scale: 2);
        var fromArray = PixelGrid.Tile(images.data<float>().ToArray(), [5, 3, 4, 6], padding: 2, scale: 2);
        Assert.Equal(fromArray.pixels, fromTensor.pixels);
        Assert.Equal((fromArray.width, fromArray.height), (fromTensor.width, fromTensor.height));
    }

    [Fact]
    public void Other_channel_counts_are_refused()
    {
        Assert.Throws<ArgumentException>(() => PixelGrid.Tile(new float[8], [1, 2, 2, 2]));
        Assert.Throws<ArgumentException>(() => PixelGrid.Tile(new float[7], [1, 1, 2, 4]));
    }
}
