using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Metrics;

/// <summary>
/// A Fréchet distance with a bootstrap interval over the generated samples.
/// <see cref="Lower"/> and <see cref="Upper"/> always bracket <see cref="Value"/>; see
/// <see cref="FrechetDistance.ComputeWithInterval(GaussianStats, Tensor, int, double, long)"/> for how.
/// </summary>
public sealed record FidResult(double Value, double Lower, double Upper, int SampleCount);

/// <summary>
/// Fréchet distance between Gaussian fits of two feature sets (FID when the features come from an
/// Inception network; our "FID-proxy" uses a classifier trained by the project):
/// d = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), all in float64.
/// The value is biased upward for small sample counts: compare methods at equal counts.
/// </summary>
public static class FrechetDistance
{
    /// <summary>Fréchet distance between two fits.</summary>
    public static double Compute(GaussianStats first, GaussianStats second)
    {
        RequireSameDimension(first.Dimension, second.Dimension);
        using var scope = torch.NewDisposeScope();
        return Compute(first.MeanTensor(), first.CovarianceTensor(), second.MeanTensor(), second.CovarianceTensor());
    }

    /// <summary>Fréchet distance between the Gaussian fits of features [N1, D] and [N2, D].</summary>
    public static double Compute(Tensor firstFeatures, Tensor secondFeatures)
        => Compute(GaussianStats.FromFeatures(firstFeatures), GaussianStats.FromFeatures(secondFeatures));

    /// <summary>Fréchet distance from means [D] and covariances [D, D] as tensors (converted to float64).</summary>
    public static double Compute(Tensor mean1, Tensor covariance1, Tensor mean2, Tensor covariance2)
    {
        using var scope = torch.NewDisposeScope();
        var sqrtCovariance1 = PsdMatrix.Sqrt(covariance1);
        return ComputeGivenSqrt(mean1.to_type(ScalarType.Float64), covariance1.to_type(ScalarType.Float64),
            sqrtCovariance1, mean2.to_type(ScalarType.Float64), covariance2.to_type(ScalarType.Float64));
    }

    /// <summary>
    /// Point estimate against a reference fit (e.g. cached statistics of real test images) plus a
    /// bootstrap interval: the generated set is resampled with replacement <paramref name="resamples"/>
    /// times (seeded), and the distance recomputed against the fixed reference.
    /// </summary>
    /// <remarks>
    /// Resampling with replacement keeps only ~63% distinct samples, and the Fréchet distance is biased
    /// upward by estimation noise, so bootstrap values sit systematically above the point estimate,
    /// often by more than their spread (measured: N = 1000, D = 64 gave d = 2.21 but bootstrap 2.5-97.5%
    /// quantiles of 3.22-3.69); a raw percentile interval would then not even contain the estimate.
    /// We therefore report the spread of the bootstrap distribution around its median, re-centred on
    /// the point estimate: [d + q_lo - median, d + q_hi - median], with the lower end clamped at 0.
    /// This describes the sampling variability of the estimate at this sample count; it does not remove
    /// the small-sample bias itself (hence: compare at equal counts).
    /// </remarks>
    public static FidResult ComputeWithInterval(GaussianStats reference, Tensor generatedFeatures,
        int resamples = 200, double confidence = 0.95, long seed = 0)
    {
        GaussianStats.RequireFeatureMatrix(generatedFeatures, nameof(generatedFeatures));
        RequireSameDimension(reference.Dimension, (int)generatedFeatures.shape[1]);
        if (resamples < 2)
            throw new ArgumentOutOfRangeException(nameof(resamples), resamples, "Use at least 2 bootstrap resamples (a few hundred for a stable interval).");
        if (!(confidence > 0 && confidence < 1))
            throw new ArgumentOutOfRangeException(nameof(confidence), confidence, "Confidence must be strictly between 0 and 1, e.g. 0.95.");

        using var scope = torch.NewDisposeScope();
        // 1. reference: its square root is computed once and reused by every resample
        var referenceMean = reference.MeanTensor();
        var referenceCovariance = reference.CovarianceTensor();
        var referenceSqrt = PsdMatrix.Sqrt(referenceCovariance);

        // 2. point estimate on the full generated set
        var generated = generatedFeatures.to_type(ScalarType.Float64);   // [N, D]
        long n = generated.shape[0];
        var (mean, covariance) = GaussianStats.MeanAndCovariance(generated);
        double value = ComputeGivenSqrt(referenceMean, referenceCovariance, referenceSqrt, mean, covariance);

        // 3. bootstrap over the generated set
        using var generator = new torch.Generator((ulong)seed);
        var values = new double[resamples];
        for (int b = 0; b < resamples; b++)
        {
            using var inner = torch.NewDisposeScope();
            var indices = torch.randint(n, [n], ScalarType.Int64, generator: generator);   // [N]
            var (resampledMean, resampledCovariance) = GaussianStats.MeanAndCovariance(generated.index_select(0, indices));
            values[b] = ComputeGivenSqrt(referenceMean, referenceCovariance, referenceSqrt, resampledMean, resampledCovariance);
        }

        // 4. interval: bootstrap spread around its median, re-centred on the point estimate
        Array.Sort(values);
        double alpha = (1 - confidence) / 2;
        double median = Quantile(values, 0.5);
        double lower = Math.Max(0.0, value + Quantile(values, alpha) - median);
        double upper = value + Quantile(values, 1 - alpha) - median;
        return new FidResult(value, lower, upper, (int)n);
    }

    /// <summary>As above, with the reference given as features [N_ref, D].</summary>
    public static FidResult ComputeWithInterval(Tensor referenceFeatures, Tensor generatedFeatures,
        int resamples = 200, double confidence = 0.95, long seed = 0)
        => ComputeWithInterval(GaussianStats.FromFeatures(referenceFeatures), generatedFeatures, resamples, confidence, seed);

    private static double ComputeGivenSqrt(Tensor mean1, Tensor covariance1, Tensor sqrtCovariance1, Tensor mean2, Tensor covariance2)
    {
        using var scope = torch.NewDisposeScope();
        double meanTerm = (mean1 - mean2).square().sum().item<double>();
        double traces = covariance1.trace().item<double>() + covariance2.trace().item<double>();
        double crossTrace = PsdMatrix.TraceSqrtOfProductGivenSqrt(sqrtCovariance1, covariance2);
        // The exact value is >= 0; a negative result can only be rounding (~1e-12 of the traces).
        return Math.Max(0.0, meanTerm + traces - 2 * crossTrace);
    }

    /// <summary>Linear-interpolation quantile of sorted values (numpy's default method).</summary>
    internal static double Quantile(double[] sorted, double q)
    {
        double position = q * (sorted.Length - 1);
        int below = (int)Math.Floor(position);
        int above = Math.Min(below + 1, sorted.Length - 1);
        double fraction = position - below;
        return sorted[below] + fraction * (sorted[above] - sorted[below]);
    }

    private static void RequireSameDimension(int d1, int d2)
    {
        if (d1 != d2)
            throw new ArgumentException($"The two feature sets have different dimensions ({d1} and {d2}); they must come from the same feature extractor.");
    }
}
