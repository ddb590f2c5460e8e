using DiffusionPrune.Metrics;
using TorchSharp;
using static DiffusionPrune.Tests.Metrics.MatrixTestHelpers;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Metrics;

public class KernelInceptionDistanceTests
{
    private static double Kernel(double[] x, double[] y) => Math.Pow(x.Zip(y, (a, b) => a * b).Sum() / x.Length + 1, 3);

    private static double[][] Rows(Tensor t)
        => Enumerable.Range(0, (int)t.shape[0]).Select(i => t[i].data<double>().ToArray()).ToArray();

    [Fact]
    public void UnbiasedMmdSquared_MatchesNaiveDoubleLoop()
    {
        using var scope = torch.NewDisposeScope();
        var x = Randn(1, 7, 5);
        var y = Randn(2, 9, 5) + 0.3;
        double[][] xs = Rows(x), ys = Rows(y);
        double xx = 0, yy = 0, xy = 0;
        for (int i = 0; i < xs.Length; i++)
            for (int j = 0; j < xs.Length; j++)
                if (i != j) xx += Kernel(xs[i], xs[j]);
        for (int i = 0; i < ys.Length; i++)
            for (int j = 0; j < ys.Length; j++)
                if (i != j) yy += Kernel(ys[i], ys[j]);
        foreach (var a in xs)
            foreach (var b in ys)
                xy += Kernel(a, b);
        double expected = xx / (7 * 6) + yy / (9 * 8) - 2 * xy / (7 * 9);

        double actual = KernelInceptionDistance.UnbiasedMmdSquared(x, y);

        Assert.True(RelativeError(actual, expected) < 1e-12, $"got {actual:R}, expected {expected:R}");
    }

    [Fact]
    public void SubsetsCoveringTheWholeSets_EqualTheFullUnbiasedEstimate()
    {
        using var scope = torch.NewDisposeScope();
        var real = Randn(3, 50, 8);
        var generated = Randn(4, 50, 8) * 1.3;

        var result = KernelInceptionDistance.Compute(real, generated, subsetSize: 50, subsetCount: 3);

        Assert.True(RelativeError(result.Mean, KernelInceptionDistance.UnbiasedMmdSquared(generated, real)) < 1e-10);
        Assert.True(result.Std < 1e-12 * Math.Abs(result.Mean), "every subset is the whole set, so there is no spread");
        Assert.Equal(50, result.SubsetSize);
    }

    [Fact]
    public void SameDistribution_IsNearZero_DifferentDistribution_IsClearlyPositive()
    {
        using var scope = torch.NewDisposeScope();
        var real = Randn(5, 2000, 16);
        var sameDistribution = Randn(6, 2000, 16);
        var shifted = Randn(7, 2000, 16) + 0.5;

        var same = KernelInceptionDistance.Compute(real, sameDistribution, subsetSize: 500, subsetCount: 50, seed: 1);
        var different = KernelInceptionDistance.Compute(real, shifted, subsetSize: 500, subsetCount: 50, seed: 1);

        // Unbiased: a match scatters around 0 (either sign) by less than one subset's spread.
        Assert.True(Math.Abs(same.Mean) < same.Std, $"same distribution {same}");
        Assert.True(different.Mean > 10 * different.Std, $"different distributions {different}");
        Assert.True(different.Mean > 20 * Math.Abs(same.Mean), $"same {same}, different {different}");
    }

    [Fact]
    public void IsReproducibleForASeed_AndSubsetSizeIsCappedBySmallerSet()
    {
        using var scope = torch.NewDisposeScope();
        var real = Randn(8, 300, 4);
        var generated = Randn(9, 120, 4);

        var first = KernelInceptionDistance.Compute(real, generated, subsetSize: 1000, subsetCount: 5, seed: 4);
        var second = KernelInceptionDistance.Compute(real, generated, subsetSize: 1000, subsetCount: 5, seed: 4);

        Assert.Equal(first, second);
        Assert.Equal(120, first.SubsetSize);
    }
}
