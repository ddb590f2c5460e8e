using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Metrics;

/// <summary>Manifold precision (fidelity) and recall (coverage), each in [0, 1].</summary>
public sealed record PrecisionRecallResult(double Precision, double Recall, int NearestNeighbours);

/// <summary>
/// k-NN manifold precision and recall (Kynkäänniemi et al. 2019). Each sample of a set gets a ball
/// whose radius is the distance to its k-th nearest neighbour in the same set (itself excluded); the
/// set's manifold is the union of the balls. Precision = fraction of generated samples inside the real
/// manifold; recall = fraction of real samples inside the generated manifold. A point on a ball's
/// boundary counts as inside, as in the reference implementation. Distances in float64.
/// </summary>
public static class PrecisionRecall
{
    /// <param name="realFeatures">[N_real, D], N_real > k</param>
    /// <param name="generatedFeatures">[N_gen, D], N_gen > k</param>
    /// <param name="k">Neighbour whose distance is the radius (3 in the paper).</param>
    /// <param name="blockRows">Rows of the distance matrix held at once (memory: blockRows × N float64).</param>
    public static PrecisionRecallResult Compute(Tensor realFeatures, Tensor generatedFeatures, int k = 3, int blockRows = 1024)
    {
        if (k < 1)
            throw new ArgumentOutOfRangeException(nameof(k), k, "k must be at least 1.");
        if (blockRows < 1)
            throw new ArgumentOutOfRangeException(nameof(blockRows), blockRows, "blockRows must be at least 1.");
        GaussianStats.RequireFeatureMatrix(realFeatures, nameof(realFeatures), minRows: k + 1);
        GaussianStats.RequireFeatureMatrix(generatedFeatures, nameof(generatedFeatures), minRows: k + 1);
        if (realFeatures.shape[1] != generatedFeatures.shape[1])
            throw new ArgumentException($"The two feature sets have different dimensions ({realFeatures.shape[1]} and {generatedFeatures.shape[1]}); they must come from the same feature extractor.");

        using var scope = torch.NewDisposeScope();
        var real = realFeatures.to_type(ScalarType.Float64);
        var generated = generatedFeatures.to_type(ScalarType.Float64);
        var realRadiiSquared = KthNeighbourDistanceSquared(real, k, blockRows);           // [N_real]
        var generatedRadiiSquared = KthNeighbourDistanceSquared(generated, k, blockRows); // [N_gen]
        double precision = FractionInsideBalls(generated, real, realRadiiSquared, blockRows);
        double recall = FractionInsideBalls(real, generated, generatedRadiiSquared, blockRows);
        return new PrecisionRecallResult(precision, recall, k);
    }

    /// <summary>
    /// Radius of each sample's ball: the distance from each row of <paramref name="features"/> [N, D] to
    /// its k-th nearest other row, float64 [N].
    /// </summary>
    public static Tensor NeighbourhoodRadii(Tensor features, int k = 3, int blockRows = 1024)
    {
        if (k < 1)
            throw new ArgumentOutOfRangeException(nameof(k), k, "k must be at least 1.");
        GaussianStats.RequireFeatureMatrix(features, nameof(features), minRows: k + 1);
        using var scope = torch.NewDisposeScope();
        return KthNeighbourDistanceSquared(features.to_type(ScalarType.Float64), k, Math.Max(1, blockRows)).sqrt().MoveToOuterDisposeScope();
    }

    /// <summary>Squared distance of each row of <paramref name="points"/> [N, D] to its k-th nearest other row.</summary>
    internal static Tensor KthNeighbourDistanceSquared(Tensor points, int k, int blockRows)
    {
        long n = points.shape[0];
        var radii = new List<Tensor>();
        for (long start = 0; start < n; start += blockRows)
        {
            using var inner = torch.NewDisposeScope();
            long end = Math.Min(n, start + blockRows);
            var distances = SquaredDistances(points.narrow(0, start, end - start), points);   // [b, N]
            // The k + 1 smallest include the point itself (distance 0); the last of them is the k-th
            // neighbour. With exact duplicates one zero is still dropped, as in the reference code.
            var (smallest, _) = distances.topk(k + 1, dim: 1, largest: false, sorted: true);
            radii.Add(smallest[.., k].MoveToOuterDisposeScope());
        }
        return torch.cat(radii, 0);
    }

    /// <summary>Fraction of <paramref name="queries"/> [M, D] within some ball (centre <paramref name="centres"/> [N, D], squared radius).</summary>
    internal static double FractionInsideBalls(Tensor queries, Tensor centres, Tensor radiiSquared, int blockRows)
    {
        long m = queries.shape[0];
        long inside = 0;
        for (long start = 0; start < m; start += blockRows)
        {
            using var inner = torch.NewDisposeScope();
            long end = Math.Min(m, start + blockRows);
            var distances = SquaredDistances(queries.narrow(0, start, end - start), centres);   // [b, N]
            inside += distances.le(radiiSquared.unsqueeze(0)).any(1).sum().item<long>();
        }
        return inside / (double)m;
    }

    /// <summary>||a_i - b_j||² for a [b, D] and b [N, D], clamped at 0 against cancellation.</summary>
    private static Tensor SquaredDistances(Tensor a, Tensor b)
    {
        var aNorms = a.square().sum(1, keepdim: true);            // [b, 1]
        var bNorms = b.square().sum(1).unsqueeze(0);              // [1, N]
        return (aNorms + bNorms - 2 * a.matmul(b.t())).clamp_min(0.0);
    }
}
