using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Metrics;

/// <summary>
/// Paired fidelity between two image batches [N, C, H, W] (e.g. original vs pruned model outputs from the
/// same noise), computed with torch ops in float64. Our images are in [-1, 1], hence a data range of 2
/// by default; pass 1 for [0, 1] or 255 for bytes.
/// </summary>
public static class ImageSimilarity
{
    public const double DefaultDataRange = 2.0;
    public const int WindowSize = 11;
    public const double WindowSigma = 1.5;
    public const double K1 = 0.01;
    public const double K2 = 0.03;

    /// <summary>Mean SSIM over the batch (see <see cref="SsimPerImage"/>).</summary>
    public static double Ssim(Tensor x, Tensor y, double dataRange = DefaultDataRange)
    {
        using var scope = torch.NewDisposeScope();
        return SsimPerImage(x, y, dataRange).mean().item<double>();
    }

    /// <summary>
    /// SSIM (Wang et al. 2004) per image [N], float64: an 11 × 11 Gaussian window (sigma 1.5), K1 = 0.01,
    /// K2 = 0.03, each channel filtered separately; the SSIM map (valid positions only, no padding, as in
    /// the original MATLAB code) is averaged over channels and positions. Needs H, W >= 11.
    /// </summary>
    public static Tensor SsimPerImage(Tensor x, Tensor y, double dataRange = DefaultDataRange)
    {
        RequirePair(x, y, dataRange);
        if (x.shape[2] < WindowSize || x.shape[3] < WindowSize)
            throw new ArgumentException($"SSIM uses an {WindowSize} x {WindowSize} window, so images must be at least that large; got {x.shape[2]} x {x.shape[3]}.");
        using var scope = torch.NewDisposeScope();
        long channels = x.shape[1];
        var a = x.to_type(ScalarType.Float64);
        var b = y.to_type(ScalarType.Float64);
        var window = GaussianWindow(channels);   // [C, 1, 11, 11], one filter per channel (groups = C)

        // 1. local means, variances and covariance, each [N, C, H - 10, W - 10]
        Tensor Filter(Tensor t) => torch.nn.functional.conv2d(t, window, groups: channels);
        var muA = Filter(a);
        var muB = Filter(b);
        var varianceA = Filter(a * a) - muA * muA;
        var varianceB = Filter(b * b) - muB * muB;
        var covariance = Filter(a * b) - muA * muB;

        // 2. SSIM map
        double c1 = Math.Pow(K1 * dataRange, 2);
        double c2 = Math.Pow(K2 * dataRange, 2);
        var map = (2 * muA * muB + c1) * (2 * covariance + c2)
                  / ((muA * muA + muB * muB + c1) * (varianceA + varianceB + c2));

        // 3. mean over channels and positions, per image
        return map.mean([1, 2, 3]).MoveToOuterDisposeScope();
    }

    /// <summary>Mean PSNR over the batch in dB (see <see cref="PsnrPerImage"/>); +∞ if any pair is identical.</summary>
    public static double Psnr(Tensor x, Tensor y, double dataRange = DefaultDataRange)
    {
        using var scope = torch.NewDisposeScope();
        return PsnrPerImage(x, y, dataRange).mean().item<double>();
    }

    /// <summary>
    /// PSNR per image [N] in dB, float64: 10 log10(range² / MSE) with the MSE over C, H, W.
    /// Identical images give +∞ (no cap): averaging such a batch gives +∞, which is the honest answer;
    /// callers that want a finite summary should cap or report the MSE instead.
    /// </summary>
    public static Tensor PsnrPerImage(Tensor x, Tensor y, double dataRange = DefaultDataRange)
    {
        RequirePair(x, y, dataRange);
        using var scope = torch.NewDisposeScope();
        var mse = (x.to_type(ScalarType.Float64) - y.to_type(ScalarType.Float64)).square().mean([1, 2, 3]);   // [N]
        // log10(range² / 0) = +∞ in IEEE arithmetic, which is what we want for identical images.
        return (10 * torch.log10(dataRange * dataRange / mse)).MoveToOuterDisposeScope();
    }

    /// <summary>Normalised 2-D Gaussian [C, 1, 11, 11], float64.</summary>
    private static Tensor GaussianWindow(long channels)
    {
        var coordinates = torch.arange(WindowSize, ScalarType.Float64) - (WindowSize - 1) / 2.0;
        var profile = torch.exp(-coordinates.square() / (2 * WindowSigma * WindowSigma));
        profile = profile / profile.sum();
        var window = profile.unsqueeze(1).matmul(profile.unsqueeze(0));   // [11, 11], sums to 1
        return window.expand(channels, 1, WindowSize, WindowSize).contiguous();
    }

    private static void RequirePair(Tensor x, Tensor y, double dataRange)
    {
        if (x.dim() != 4)
            throw new ArgumentException($"Images must be a batch [N, C, H, W]; got shape [{string.Join(", ", x.shape)}].", nameof(x));
        if (!x.shape.SequenceEqual(y.shape))
            throw new ArgumentException($"The two image batches must have the same shape; got [{string.Join(", ", x.shape)}] and [{string.Join(", ", y.shape)}].");
        if (x.shape[0] == 0)
            throw new ArgumentException("The image batches are empty.");
        if (!(dataRange > 0) || double.IsInfinity(dataRange))
            throw new ArgumentOutOfRangeException(nameof(dataRange), dataRange, "The data range must be a positive number (2 for images in [-1, 1]).");
    }
}
