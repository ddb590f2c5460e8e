using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Metrics;

/// <summary>
/// Square roots of symmetric positive semi-definite matrices (covariances), in float64, through the
/// symmetric eigendecomposition.
/// </summary>
/// <remarks>
/// Why not a general matrix square root of S1·S2 (what pytorch-fid does with scipy's Schur-based
/// sqrtm): S1·S2 is not symmetric, so a general method can return complex parts and loses accuracy
/// when a covariance is (near) singular, which is the usual case for few samples and many features;
/// pytorch-fid patches that by adding eps·I and discarding imaginary parts. We only ever need the
/// trace of the root, and S1·S2 = S1^(1/2) · (S1^(1/2) S2 S1^(1/2)) · S1^(-1/2) is similar to the
/// symmetric PSD matrix M = S1^(1/2) S2 S1^(1/2), so the eigenvalues of S1·S2 are the (real,
/// non-negative) eigenvalues λ of M and Tr (S1 S2)^(1/2) = Σ sqrt(λ). Both steps are symmetric
/// eigendecompositions, which are backward stable; eigenvalues that rounding pushes slightly below
/// zero are clamped to zero. No inverse is taken, so singular S1 or S2 is fine.
/// </remarks>
public static class PsdMatrix
{
    /// <summary>
    /// The symmetric PSD square root of <paramref name="a"/> [D, D] (float64 result): V diag(sqrt(max(λ, 0))) Vᵀ.
    /// The input is symmetrised first, so a covariance with rounding-level asymmetry is accepted.
    /// </summary>
    public static Tensor Sqrt(Tensor a)
    {
        RequireSquare(a, nameof(a));
        using var scope = torch.NewDisposeScope();
        var symmetric = Symmetrise(a.to_type(ScalarType.Float64));
        var (eigenvalues, eigenvectors) = torch.linalg.eigh(symmetric);
        var roots = eigenvalues.clamp_min(0.0).sqrt();
        // V diag(r) Vᵀ, written as (V * r) @ Vᵀ to avoid building the diagonal matrix.
        var root = Symmetrise((eigenvectors * roots.unsqueeze(0)).matmul(eigenvectors.t()));
        return root.MoveToOuterDisposeScope();
    }

    /// <summary>Tr (A B)^(1/2) for symmetric PSD A and B [D, D]; see the class remarks for the method.</summary>
    public static double TraceSqrtOfProduct(Tensor a, Tensor b)
    {
        using var scope = torch.NewDisposeScope();
        return TraceSqrtOfProductGivenSqrt(Sqrt(a), b);
    }

    /// <summary>
    /// Tr (A B)^(1/2) when sqrt(A) is already known (e.g. a cached reference covariance, reused across
    /// bootstrap resamples): Σ sqrt(max(λ, 0)) over the eigenvalues λ of sqrt(A) B sqrt(A).
    /// </summary>
    public static double TraceSqrtOfProductGivenSqrt(Tensor sqrtA, Tensor b)
    {
        RequireSquare(sqrtA, nameof(sqrtA));
        RequireSquare(b, nameof(b));
        if (sqrtA.shape[0] != b.shape[0])
            throw new ArgumentException($"Matrices must have the same size; got [{sqrtA.shape[0]}, {sqrtA.shape[0]}] and [{b.shape[0]}, {b.shape[0]}].");
        using var scope = torch.NewDisposeScope();
        var rootA = sqrtA.to_type(ScalarType.Float64);
        var middle = Symmetrise(rootA.matmul(b.to_type(ScalarType.Float64)).matmul(rootA));
        var eigenvalues = torch.linalg.eigvalsh(middle);
        return eigenvalues.clamp_min(0.0).sqrt().sum().item<double>();
    }

    private static Tensor Symmetrise(Tensor m) => (m + m.t()) * 0.5;

    private static void RequireSquare(Tensor m, string name)
    {
        if (m.dim() != 2 || m.shape[0] != m.shape[1])
            throw new ArgumentException($"'{name}' must be a square matrix [D, D]; got shape [{string.Join(", ", m.shape)}].", name);
    }
}
