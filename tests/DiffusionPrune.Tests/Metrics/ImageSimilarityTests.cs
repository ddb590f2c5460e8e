using DiffusionPrune.Metrics;
using TorchSharp;
using static DiffusionPrune.Tests.Metrics.MatrixTestHelpers;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Metrics;

public class ImageSimilarityTests
{
    /// <summary>Smooth images in [-1, 1]: a few seeded sinusoid patterns, [n, c, size, size].</summary>
    private static Tensor SmoothImages(long seed, int n, int c, int size)
    {
        var phases = Randn(seed, n, c, 1, 1);
        var coordinates = torch.arange(size, ScalarType.Float64) / size * 2 * Math.PI;
        var pattern = torch.sin(coordinates.reshape(1, 1, size, 1) * 2 + phases) * torch.cos(coordinates.reshape(1, 1, 1, size) * 3 - phases);
        return pattern * 0.9;
    }

    [Fact]
    public void IdenticalImages_SsimIsOne_PsnrIsInfinite()
    {
        using var scope = torch.NewDisposeScope();
        var images = SmoothImages(1, 3, 2, 28);

        Assert.Equal(1.0, ImageSimilarity.Ssim(images, images.clone()), 12);
        Assert.Equal(double.PositiveInfinity, ImageSimilarity.Psnr(images, images.clone()));
    }

    [Fact]
    public void Ssim_DecreasesMonotonicallyWithNoise()
    {
        using var scope = torch.NewDisposeScope();
        var images = SmoothImages(2, 4, 1, 32);
        var noise = Randn(3, 4, 1, 32, 32);
        double[] sigmas = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8];

        double[] ssim = sigmas.Select(s => ImageSimilarity.Ssim(images, images + s * noise)).ToArray();

        for (int i = 1; i < ssim.Length; i++)
            Assert.True(ssim[i] < ssim[i - 1], $"SSIM by noise level: {string.Join(", ", ssim.Select(v => v.ToString("F4")))}");
        Assert.True(ssim[^1] < 0.5, $"heavy noise should destroy structure; SSIM {ssim[^1]:F4}");
    }

    [Fact]
    public void Psnr_ConstantOffset_Is10Log10RangeSquaredOverMse()
    {
        using var scope = torch.NewDisposeScope();
        var images = SmoothImages(4, 2, 3, 16);
        const double offset = 0.1;   // MSE = 0.01 everywhere
        double expected = 10 * Math.Log10(2.0 * 2.0 / (offset * offset));   // 26.0206 dB

        Assert.Equal(expected, ImageSimilarity.Psnr(images, images + offset), 9);
        Assert.Equal(10 * Math.Log10(1.0 / (offset * offset)), ImageSimilarity.Psnr(images, images + offset, dataRange: 1), 9);
    }

    [Fact]
    public void Ssim_ConstantImages_MatchesLuminanceTermClosedForm()
    {
        using var scope = torch.NewDisposeScope();
        const double a = 0.3, b = -0.2, range = 2;
        double c1 = Math.Pow(0.01 * range, 2);
        // No variance: the structure term is (0 + C2)/(0 + C2) = 1 and SSIM is the luminance term.
        double expected = (2 * a * b + c1) / (a * a + b * b + c1);

        double actual = ImageSimilarity.Ssim(torch.full(2, 1, 12, 12, a, ScalarType.Float64), torch.full(2, 1, 12, 12, b, ScalarType.Float64));

        Assert.Equal(expected, actual, 12);
    }

    [Fact]
    public void Ssim_MatchesNaiveWindowedImplementationPerImageAndChannel()
    {
        using var scope = torch.NewDisposeScope();
        var x = Randn(5, 2, 3, 13, 14).tanh();
        var y = (x + 0.3 * Randn(6, 2, 3, 13, 14)).clamp(-1, 1);

        var perImage = ImageSimilarity.SsimPerImage(x, y).data<double>().ToArray();

        for (int n = 0; n < 2; n++)
            Assert.True(RelativeError(perImage[n], NaiveSsim(x[n], y[n], 2.0)) < 1e-12, $"image {n}: {perImage[n]:R} vs {NaiveSsim(x[n], y[n], 2.0):R}");
    }

    [Fact]
    public void ImagesSmallerThanTheWindow_AreRejected()
    {
        using var scope = torch.NewDisposeScope();
        var small = torch.zeros(1, 1, 8, 8);
        Assert.Throws<ArgumentException>(() => ImageSimilarity.Ssim(small, small));
    }

    /// <summary>Direct loops over every valid 11 × 11 window of every channel of one image [C, H, W].</summary>
    private static double NaiveSsim(Tensor x, Tensor y, double range)
    {
        int channels = (int)x.shape[0], height = (int)x.shape[1], width = (int)x.shape[2];
        double[] xs = x.contiguous().data<double>().ToArray(), ys = y.contiguous().data<double>().ToArray();
        var weights = new double[11, 11];
        double total = 0;
        for (int u = 0; u < 11; u++)
            for (int v = 0; v < 11; v++)
                total += weights[u, v] = Math.Exp(-((u - 5) * (u - 5) + (v - 5) * (v - 5)) / (2 * 1.5 * 1.5));
        double c1 = Math.Pow(0.01 * range, 2), c2 = Math.Pow(0.03 * range, 2);
        double sum = 0;
        int count = 0;
        for (int c = 0; c < channels; c++)
            for (int i = 0; i + 11 <= height; i++)
                for (int j = 0; j + 11 <= width; j++)
                {
                    double mx = 0, my = 0, sxx = 0, syy = 0, sxy = 0;
                    for (int u = 0; u < 11; u++)
                        for (int v = 0; v < 11; v++)
                        {
                            double w = weights[u, v] / total;
                            int index = (c * height + i + u) * width + j + v;
                            mx += w * xs[index];
                            my += w * ys[index];
                            sxx += w * xs[index] * xs[index];
                            syy += w * ys[index] * ys[index];
                            sxy += w * xs[index] * ys[index];
                        }
                    sxx -= mx * mx;
                    syy -= my * my;
                    sxy -= mx * my;
                    sum += (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
                    count++;
                }
        return sum / count;
    }
}
