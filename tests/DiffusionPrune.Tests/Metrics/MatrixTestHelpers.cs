using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Metrics;

/// <summary>Seeded test data and an independent matrix square root for the metric tests.</summary>
internal static class MatrixTestHelpers
{
    public static Tensor Randn(long seed, params long[] shape)
    {
        using var generator = new torch.Generator((ulong)seed);
        return torch.randn(shape, ScalarType.Float64, generator: generator);
    }

    /// <summary>A random symmetric positive-definite matrix G Gᵀ / D + shift·I (built without any eigendecomposition).</summary>
    public static Tensor RandomSpd(long seed, int d, double shift = 0.1)
    {
        var g = Randn(seed, d, d);
        return g.matmul(g.t()) / d + shift * torch.eye(d, dtype: ScalarType.Float64);
    }

    /// <summary>A random orthogonal matrix (Q of a QR factorisation).</summary>
    public static Tensor RandomRotation(long seed, int d)
    {
        var (q, _) = torch.linalg.qr(Randn(seed, d, d));
        return q;
    }

    /// <summary>
    /// Principal square root of a general (not necessarily symmetric) matrix with real positive
    /// eigenvalues, by the Denman–Beavers iteration: Y ← (Y + Z⁻¹)/2, Z ← (Z + Y⁻¹)/2 from Y = A, Z = I.
    /// Uses only matrix inverses, so it is independent of the eigendecomposition under test.
    /// </summary>
    public static Tensor DenmanBeaversSqrt(Tensor a, int maxIterations = 100)
    {
        var y = a.to_type(ScalarType.Float64);
        var z = torch.eye(a.shape[0], dtype: ScalarType.Float64);
        for (int i = 0; i < maxIterations; i++)
        {
            var nextY = (y + torch.linalg.inv(z)) * 0.5;
            var nextZ = (z + torch.linalg.inv(y)) * 0.5;
            double change = (nextY - y).norm().item<double>() / nextY.norm().item<double>();
            y = nextY;
            z = nextZ;
            if (change < 1e-15) return y;
        }
        return y;
    }

    public static double RelativeError(Tensor actual, Tensor expected)
        => (actual - expected).norm().item<double>() / expected.norm().item<double>();

    public static double RelativeError(double actual, double expected)
        => Math.Abs(actual - expected) / Math.Abs(expected);
}
