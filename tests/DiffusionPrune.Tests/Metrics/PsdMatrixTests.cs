using DiffusionPrune.Metrics;
using TorchSharp;
using static DiffusionPrune.Tests.Metrics.MatrixTestHelpers;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Metrics;

public class PsdMatrixTests
{
    [Fact]
    public void TraceSqrtOfProduct_DiagonalCovariances_EqualsSumOfSqrtOfProducts()
    {
        using var scope = torch.NewDisposeScope();
        double[] a = [0.5, 1, 2, 3, 7, 1e-3];
        double[] b = [4, 0.25, 2, 9, 0.1, 5];
        double expected = a.Zip(b, (x, y) => Math.Sqrt(x * y)).Sum();

        double actual = PsdMatrix.TraceSqrtOfProduct(torch.diag(torch.tensor(a)), torch.diag(torch.tensor(b)));

        Assert.True(RelativeError(actual, expected) < 1e-12, $"got {actual:R}, expected {expected:R}");
    }

    [Fact]
    public void TraceSqrtOfProduct_CommutingRotatedCovariances_EqualsSumOfSqrtOfEigenvalueProducts()
    {
        using var scope = torch.NewDisposeScope();
        const int d = 12;
        var q = RandomRotation(seed: 3, d);
        var a = torch.linspace(0.1, 4, d, ScalarType.Float64);
        var b = torch.linspace(3, 0.2, d, ScalarType.Float64);
        var s1 = q.matmul(torch.diag(a)).matmul(q.t());
        var s2 = q.matmul(torch.diag(b)).matmul(q.t());
        double expected = (a * b).sqrt().sum().item<double>();

        double actual = PsdMatrix.TraceSqrtOfProduct(s1, s2);

        Assert.True(RelativeError(actual, expected) < 1e-10, $"got {actual:R}, expected {expected:R}");
    }

    [Theory]
    [InlineData(5, 1)]
    [InlineData(40, 2)]
    [InlineData(128, 3)]
    public void Sqrt_OfRandomSpdMatrix_SquaresBackToTheMatrixAndIsSymmetric(int d, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var a = RandomSpd(seed, d);

        var root = PsdMatrix.Sqrt(a);

        Assert.True(RelativeError(root.matmul(root), a) < 1e-12, $"sqrt(A)² differs from A by {RelativeError(root.matmul(root), a):E2}");
        Assert.Equal(0.0, (root - root.t()).abs().max().item<double>());
        Assert.True(torch.linalg.eigvalsh(root).min().item<double>() > 0, "the root of an SPD matrix must be positive definite");
    }

    [Fact]
    public void Sqrt_MatchesDenmanBeaversIteration()
    {
        using var scope = torch.NewDisposeScope();
        var a = RandomSpd(seed: 11, d: 30);

        Assert.True(RelativeError(PsdMatrix.Sqrt(a), DenmanBeaversSqrt(a)) < 1e-10);
    }

    [Theory]
    [InlineData(8, 21)]
    [InlineData(64, 22)]
    [InlineData(200, 23)]
    public void TraceSqrtOfProduct_RandomSpdPair_MatchesDenmanBeaversTraceTo1e8(int d, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var s1 = RandomSpd(seed, d);
        var s2 = RandomSpd(seed + 1000, d, shift: 0.3);
        // S1·S2 is not symmetric; Denman–Beavers takes its principal root directly.
        double expected = DenmanBeaversSqrt(s1.matmul(s2)).trace().item<double>();

        double actual = PsdMatrix.TraceSqrtOfProduct(s1, s2);
        double swapped = PsdMatrix.TraceSqrtOfProduct(s2, s1);

        Assert.True(RelativeError(actual, expected) < 1e-8, $"got {actual:R}, Denman–Beavers {expected:R}");
        Assert.True(RelativeError(swapped, expected) < 1e-8, $"swapped order got {swapped:R}, Denman–Beavers {expected:R}");
    }

    [Fact]
    public void TraceSqrtOfProduct_RankDeficientCovariance_IsFiniteAndEqualsTraceForEqualMatrices()
    {
        using var scope = torch.NewDisposeScope();
        // 10 samples in 50 dimensions: the sample covariance has rank 9, the case where general sqrtm struggles.
        var features = Randn(31, 10, 50);
        var centred = features - features.mean([0]).unsqueeze(0);
        var s = centred.t().matmul(centred) / 9;

        double actual = PsdMatrix.TraceSqrtOfProduct(s, s);
        double expected = s.trace().item<double>();

        Assert.True(double.IsFinite(actual));
        // Zero eigenvalues come back as ±1e-16·λmax; their clamped square roots add ~1e-8·sqrt(λmax) each.
        Assert.True(RelativeError(actual, expected) < 1e-6, $"got {actual:R}, expected {expected:R}");
    }

    [Fact]
    public void Sqrt_RejectsNonSquareInput()
    {
        using var scope = torch.NewDisposeScope();
        Assert.Throws<ArgumentException>(() => PsdMatrix.Sqrt(torch.zeros(3, 4, dtype: ScalarType.Float64)));
    }
}
