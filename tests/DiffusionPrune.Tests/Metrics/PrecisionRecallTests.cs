using DiffusionPrune.Metrics;
using TorchSharp;
using static DiffusionPrune.Tests.Metrics.MatrixTestHelpers;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Metrics;

public class PrecisionRecallTests
{
    [Fact]
    public void KthNeighbourRadius_OnALine_IsTheKthGapExcludingThePointItself()
    {
        using var scope = torch.NewDisposeScope();
        var points = torch.tensor(new[] { 0.0, 1, 3, 6, 10 }, [5, 1]);

        var k1 = PrecisionRecall.NeighbourhoodRadii(points, k: 1, blockRows: 2).data<double>().ToArray();
        var k2 = PrecisionRecall.NeighbourhoodRadii(points, k: 2, blockRows: 2).data<double>().ToArray();

        Assert.Equal(new[] { 1.0, 1, 2, 3, 4 }, k1);
        Assert.Equal(new[] { 3.0, 2, 3, 4, 7 }, k2);
    }

    [Fact]
    public void IdenticalSets_GivePrecisionAndRecallOne()
    {
        using var scope = torch.NewDisposeScope();
        var features = Randn(1, 800, 10);

        var result = PrecisionRecall.Compute(features, features.clone());

        Assert.Equal(1.0, result.Precision);
        Assert.Equal(1.0, result.Recall);
        Assert.Equal(3, result.NearestNeighbours);
    }

    [Fact]
    public void DisjointFarApartSets_GiveZeroAndZero()
    {
        using var scope = torch.NewDisposeScope();
        var real = Randn(2, 500, 10);
        var generated = Randn(3, 500, 10) + 100;

        var result = PrecisionRecall.Compute(real, generated);

        Assert.Equal(0.0, result.Precision);
        Assert.Equal(0.0, result.Recall);
    }

    [Fact]
    public void GeneratedSetCollapsedOntoOneMode_HasHighPrecisionAndLowRecall()
    {
        using var scope = torch.NewDisposeScope();
        // Real: 10 well-separated clusters of 200. Generated: 600 samples all from cluster 0, tighter.
        const int d = 8, clusters = 10, perCluster = 200;
        var centres = Randn(4, clusters, d) * 10;
        var real = (Randn(5, clusters, perCluster, d) + centres.unsqueeze(1)).reshape(clusters * perCluster, d);
        var generated = Randn(6, 600, d) * 0.5 + centres[0].unsqueeze(0);

        var result = PrecisionRecall.Compute(real, generated);

        Assert.True(result.Precision > 0.9, $"{result}");
        Assert.True(result.Recall < 0.15, $"{result}");
    }

    [Fact]
    public void MatchesBruteForceAcrossBlockBoundaries()
    {
        using var scope = torch.NewDisposeScope();
        var real = Randn(7, 53, 3);
        var generated = Randn(8, 41, 3) * 1.4 + 0.3;
        const int k = 3;
        double[][] r = Rows(real), g = Rows(generated);
        double[] realRadii = r.Select(p => KthDistance(p, r, k)).ToArray();
        double[] genRadii = g.Select(p => KthDistance(p, g, k)).ToArray();
        double precision = g.Count(p => r.Where((c, i) => Distance(p, c) <= realRadii[i]).Any()) / (double)g.Length;
        double recall = r.Count(p => g.Where((c, i) => Distance(p, c) <= genRadii[i]).Any()) / (double)r.Length;

        var result = PrecisionRecall.Compute(real, generated, k, blockRows: 10);

        Assert.True(precision is > 0.05 and < 0.95 && recall is > 0.05 and < 0.95, "the data should give a non-trivial case");
        Assert.Equal(precision, result.Precision);
        Assert.Equal(recall, result.Recall);
    }

    private static double[][] Rows(Tensor t)
        => Enumerable.Range(0, (int)t.shape[0]).Select(i => t[i].data<double>().ToArray()).ToArray();

    private static double Distance(double[] a, double[] b) => Math.Sqrt(a.Zip(b, (x, y) => (x - y) * (x - y)).Sum());

    private static double KthDistance(double[] p, double[][] set, int k)
        => set.Select(q => Distance(p, q)).Order().ElementAt(k);   // element 0 is the point itself
}
