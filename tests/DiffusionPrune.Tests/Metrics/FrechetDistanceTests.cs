using DiffusionPrune.Formats;
using DiffusionPrune.Metrics;
using TorchSharp;
using static DiffusionPrune.Tests.Metrics.MatrixTestHelpers;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Metrics;

public class FrechetDistanceTests
{
    /// <summary>N samples of N(mean, Q diag(variances) Qᵀ).</summary>
    private static Tensor Gaussian(long seed, int n, Tensor mean, Tensor rotation, Tensor variances)
        => (Randn(seed, n, mean.shape[0]) * variances.sqrt().unsqueeze(0)).matmul(rotation.t()) + mean.unsqueeze(0);

    [Fact]
    public void IdenticalSets_GiveZero()
    {
        using var scope = torch.NewDisposeScope();
        var features = Randn(1, 500, 32) * 3 + 1;

        double d = FrechetDistance.Compute(features, features.clone());

        Assert.True(d < 1e-9, $"FID of a set with itself is {d:E3}");
    }

    [Fact]
    public void KnownGaussians_LargeN_MatchClosedFormWithinSamplingError()
    {
        using var scope = torch.NewDisposeScope();
        const int d = 6, n = 100_000;
        // Same eigenvectors (commuting covariances), rotated so the fits are not diagonal:
        // closed form ||mu1 - mu2||² + Σ (sqrt(a_i) - sqrt(b_i))².
        var q = RandomRotation(seed: 5, d);
        var a = torch.tensor(new[] { 1.0, 2, 0.5, 3, 1.5, 0.8 });
        var b = torch.tensor(new[] { 2.0, 1, 1, 0.5, 1.5, 3 });
        var mean1 = torch.zeros(d, dtype: ScalarType.Float64);
        var mean2 = torch.tensor(new[] { 0.5, -0.5, 0, 1, 0, 0.25 });
        double expected = (mean1 - mean2).square().sum().item<double>() + (a.sqrt() - b.sqrt()).square().sum().item<double>();

        double actual = FrechetDistance.Compute(Gaussian(10, n, mean1, q, a), Gaussian(11, n, mean2, q, b));

        // The relative sampling error at this N had a standard deviation of 0.8% over 10 seeds, so 3%
        // (~4 sigma) is the noise floor; a wrong cross term (e.g. sqrt(Tr S1 S2) instead of
        // Tr sqrt(S1 S2), or a lost factor 2) is off by tens of percent or more. The algebra itself is
        // checked to 1e-8 in FromStats_NonCommutingCovariances_MatchesIndependentTraceComputation.
        Assert.True(RelativeError(actual, expected) < 0.03, $"got {actual:R}, closed form {expected:R}");
    }

    [Fact]
    public void FromStats_NonCommutingCovariances_MatchesIndependentTraceComputation()
    {
        using var scope = torch.NewDisposeScope();
        const int d = 40;
        var s1 = RandomSpd(41, d);
        var s2 = RandomSpd(42, d, shift: 0.5);
        var mu1 = Randn(43, d);
        var mu2 = Randn(44, d);
        double expected = (mu1 - mu2).square().sum().item<double>() + s1.trace().item<double>() + s2.trace().item<double>()
                          - 2 * DenmanBeaversSqrt(s1.matmul(s2)).trace().item<double>();

        double actual = FrechetDistance.Compute(mu1, s1, mu2, s2);

        Assert.True(RelativeError(actual, expected) < 1e-8, $"got {actual:R}, expected {expected:R}");
    }

    [Fact]
    public void IsSymmetric()
    {
        using var scope = torch.NewDisposeScope();
        var x = Randn(2, 400, 24);
        var y = Randn(3, 300, 24) * 1.5 + 0.2;

        double xy = FrechetDistance.Compute(x, y);
        double yx = FrechetDistance.Compute(y, x);

        Assert.True(xy > 1);
        Assert.True(RelativeError(yx, xy) < 1e-10, $"d(x, y) = {xy:R}, d(y, x) = {yx:R}");
    }

    [Fact]
    public void ShiftingASetByV_AddsSquaredNormOfV()
    {
        using var scope = torch.NewDisposeScope();
        var x = Randn(4, 600, 16);
        var y = Randn(5, 500, 16) * 0.7 + 0.3;
        var v = Randn(6, 16);
        double vv = v.square().sum().item<double>();

        // Same set shifted: only the mean term changes.
        double selfShift = FrechetDistance.Compute(x, x + v);
        // Different sets: ||mu_x - mu_y - v||² = ||mu_x - mu_y||² + ||v||² + 2 (mu_y - mu_x)·v.
        double before = FrechetDistance.Compute(x, y);
        double after = FrechetDistance.Compute(x, y + v);
        double cross = 2 * ((y.mean([0]) - x.mean([0])) * v).sum().item<double>();

        Assert.True(RelativeError(selfShift, vv) < 1e-9, $"d(x, x + v) = {selfShift:R}, ||v||² = {vv:R}");
        Assert.True(Math.Abs(after - before - vv - cross) < 1e-9 * after, $"change {after - before:R}, expected {vv + cross:R}");
    }

    [Fact]
    public void GaussianStats_UseUnbiasedCovariance()
    {
        using var scope = torch.NewDisposeScope();
        var features = torch.tensor(new[] { 1.0, 2, 3, 6 }, [4, 1]);

        var stats = GaussianStats.FromFeatures(features);

        Assert.Equal(3.0, stats.Mean[0], 12);
        Assert.Equal(14.0 / 3.0, stats.Covariance[0, 0], 12);   // Σ (x - 3)² = 14, over N - 1 = 3
        Assert.Equal(4, stats.SampleCount);
    }

    [Fact]
    public void GaussianStats_SaveAndLoad_RoundTripExactly()
    {
        using var scope = torch.NewDisposeScope();
        var stats = GaussianStats.FromFeatures(Randn(7, 300, 20));
        var other = Randn(8, 250, 20) + 0.1;
        string path = Path.Combine(Path.GetTempPath(), $"gaussian-stats-{Guid.NewGuid():N}.safetensors");
        try
        {
            stats.Save(path, new Dictionary<string, string> { ["source"] = "test" });
            var loaded = GaussianStats.Load(path);

            Assert.Equal(stats.Mean, loaded.Mean);
            Assert.Equal(stats.Covariance, loaded.Covariance);
            Assert.Equal(stats.SampleCount, loaded.SampleCount);
            Assert.Equal(FrechetDistance.ComputeWithInterval(stats, other, resamples: 10).Value,
                         FrechetDistance.ComputeWithInterval(loaded, other, resamples: 10).Value);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void GaussianStats_Load_FileWithoutStatistics_SaysWhatIsMissing()
    {
        using var scope = torch.NewDisposeScope();
        string path = Path.Combine(Path.GetTempPath(), $"not-stats-{Guid.NewGuid():N}.safetensors");
        try
        {
            SafetensorsWriter.Write(path, new Dictionary<string, Tensor> { ["weight"] = torch.zeros(3) });
            var error = Assert.Throws<InvalidDataException>(() => GaussianStats.Load(path));
            Assert.Contains("mu", error.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Compute_DifferentFeatureDimensions_Throws()
    {
        using var scope = torch.NewDisposeScope();
        Assert.Throws<ArgumentException>(() => FrechetDistance.Compute(Randn(1, 10, 4), Randn(2, 10, 5)));
    }

    [Fact]
    public void BootstrapInterval_ContainsPointEstimateAndNarrowsWithLargerN()
    {
        using var scope = torch.NewDisposeScope();
        const int d = 8;
        var reference = GaussianStats.FromFeatures(Randn(20, 5000, d));
        var generated = Randn(21, 4000, d) * 1.2 + 0.3;

        var small = FrechetDistance.ComputeWithInterval(reference, generated[..500], resamples: 200, seed: 1);
        var large = FrechetDistance.ComputeWithInterval(reference, generated, resamples: 200, seed: 1);

        foreach (var result in new[] { small, large })
        {
            Assert.True(result.Lower <= result.Value && result.Value <= result.Upper, $"{result}");
            Assert.True(result.Upper - result.Lower > 0, $"{result}");
        }
        Assert.Equal(500, small.SampleCount);
        Assert.Equal(4000, large.SampleCount);
        // Width scales like 1/sqrt(N): sqrt(8) ≈ 2.8 times narrower is expected.
        Assert.True(large.Upper - large.Lower < 0.6 * (small.Upper - small.Lower), $"small N {small}, large N {large}");
    }

    [Fact]
    public void BootstrapInterval_ContainsPointEstimateWhenResamplingBiasDominates()
    {
        using var scope = torch.NewDisposeScope();
        // Same distribution, many dimensions, few samples: the estimate is almost all small-sample bias,
        // and resamples with duplicates are biased further up, so raw bootstrap quantiles lie above it.
        const int d = 48;
        var reference = GaussianStats.FromFeatures(Randn(40, 5000, d));
        var generated = Randn(41, 600, d);

        var result = FrechetDistance.ComputeWithInterval(reference, generated, resamples: 100, seed: 2);

        Assert.True(result.Lower <= result.Value && result.Value <= result.Upper, $"{result}");
        Assert.True(result.Lower >= 0, $"{result}");
    }

    [Fact]
    public void BootstrapInterval_IsReproducibleForASeed()
    {
        using var scope = torch.NewDisposeScope();
        var reference = Randn(30, 400, 6);
        var generated = Randn(31, 300, 6) + 0.2;

        var first = FrechetDistance.ComputeWithInterval(reference, generated, resamples: 50, seed: 9);
        var second = FrechetDistance.ComputeWithInterval(reference, generated, resamples: 50, seed: 9);

        Assert.Equal(first, second);
    }
}
