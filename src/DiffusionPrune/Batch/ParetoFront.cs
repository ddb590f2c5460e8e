namespace DiffusionPrune.Batch;

/// <summary>The non-dominated points of a set where both coordinates are costs (lower is better: latency, FID).</summary>
public static class ParetoFront
{
    /// <summary>
    /// Indices of the points no other point dominates, ordered by x (then y). A point dominates another when it is
    /// no worse in both coordinates and better in at least one; identical points do not dominate each other, so
    /// both stay. Points with a NaN coordinate are never on the front.
    /// </summary>
    public static IReadOnlyList<int> Indices(IReadOnlyList<(double X, double Y)> points)
    {
        var front = new List<int>();
        for (int i = 0; i < points.Count; i++)
        {
            var p = points[i];
            if (double.IsNaN(p.X) || double.IsNaN(p.Y)) continue;
            bool dominated = false;
            for (int j = 0; j < points.Count && !dominated; j++)
            {
                var q = points[j];
                dominated = j != i && q.X <= p.X && q.Y <= p.Y && (q.X < p.X || q.Y < p.Y);
            }
            if (!dominated) front.Add(i);
        }
        return front.OrderBy(i => points[i].X).ThenBy(i => points[i].Y).ToArray();
    }
}
