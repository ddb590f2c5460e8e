using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Metrics;

/// <summary>
/// KID over subsets: mean and standard deviation (population, as torch-fidelity reports it) of the
/// per-subset unbiased MMD² estimates. The mean can be slightly negative when the distributions match.
/// </summary>
public sealed record KidResult(double Mean, double Std, int SubsetSize, int SubsetCount);

/// <summary>
/// Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the polynomial kernel
/// k(x, y) = (x·y / D + 1)³, averaged over random subsets, in float64.
/// Unlike FID it is unbiased in the sample count, so it complements FID at small counts.
/// </summary>
public static class KernelInceptionDistance
{
    /// <param name="realFeatures">[N_real, D]</param>
    /// <param name="generatedFeatures">[N_gen, D]</param>
    /// <param name="subsetSize">Samples drawn (without replacement) from each set per subset; capped at the smaller set size.</param>
    /// <param name="subsetCount">Number of subsets averaged.</param>
    /// <param name="seed">Seed of the subset draws.</param>
    public static KidResult Compute(Tensor realFeatures, Tensor generatedFeatures,
        int subsetSize = 1000, int subsetCount = 100, long seed = 0)
    {
        GaussianStats.RequireFeatureMatrix(realFeatures, nameof(realFeatures));
        GaussianStats.RequireFeatureMatrix(generatedFeatures, nameof(generatedFeatures));
        if (realFeatures.shape[1] != generatedFeatures.shape[1])
            throw new ArgumentException($"The two feature sets have different dimensions ({realFeatures.shape[1]} and {generatedFeatures.shape[1]}); they must come from the same feature extractor.");
        if (subsetSize < 2)
            throw new ArgumentOutOfRangeException(nameof(subsetSize), subsetSize, "The unbiased estimate needs subsets of at least 2 samples.");
        if (subsetCount < 1)
            throw new ArgumentOutOfRangeException(nameof(subsetCount), subsetCount, "Use at least one subset.");

        using var scope = torch.NewDisposeScope();
        var real = realFeatures.to_type(ScalarType.Float64);
        var generated = generatedFeatures.to_type(ScalarType.Float64);
        long m = Math.Min(subsetSize, Math.Min(real.shape[0], generated.shape[0]));
        using var generator = new torch.Generator((ulong)seed);
        var estimates = new double[subsetCount];
        for (int s = 0; s < subsetCount; s++)
        {
            using var inner = torch.NewDisposeScope();
            var x = generated.index_select(0, torch.randperm(generated.shape[0], generator: generator)[..(int)m]);   // [m, D]
            var y = real.index_select(0, torch.randperm(real.shape[0], generator: generator)[..(int)m]);            // [m, D]
            estimates[s] = UnbiasedMmdSquared(x, y);
        }

        double mean = estimates.Average();
        double std = Math.Sqrt(estimates.Select(e => (e - mean) * (e - mean)).Average());
        return new KidResult(mean, std, (int)m, subsetCount);
    }

    /// <summary>
    /// Unbiased MMD² between x [m, D] and y [m, D] with the cubic polynomial kernel: the diagonals of
    /// k(x, x) and k(y, y) (a sample with itself) are left out of the within-set means.
    /// </summary>
    public static double UnbiasedMmdSquared(Tensor x, Tensor y)
    {
        using var scope = torch.NewDisposeScope();
        x = x.to_type(ScalarType.Float64);
        y = y.to_type(ScalarType.Float64);
        long m = x.shape[0], n = y.shape[0];
        double d = x.shape[1];
        var kxx = (x.matmul(x.t()) / d + 1).pow(3);   // [m, m]
        var kyy = (y.matmul(y.t()) / d + 1).pow(3);   // [n, n]
        var kxy = (x.matmul(y.t()) / d + 1).pow(3);   // [m, n]
        double withinX = (kxx.sum().item<double>() - kxx.diagonal().sum().item<double>()) / (m * (m - 1.0));
        double withinY = (kyy.sum().item<double>() - kyy.diagonal().sum().item<double>()) / (n * (n - 1.0));
        double cross = kxy.sum().item<double>() / (m * (double)n);
        return withinX + withinY - 2 * cross;
    }
}
