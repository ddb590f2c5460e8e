using DiffusionPrune.Batch;

namespace DiffusionPrune.Tests.Batch;

public class ParetoFrontTests
{
    [Fact]
    public void Dominated_points_are_excluded_and_the_front_is_ordered_by_x()
    {
        (double, double)[] points =
        [
            (3, 4), // dominated by (2, 3)
            (1, 5),
            (4, 1),
            (2, 6), // dominated by (1, 5) and (2, 3)
            (2, 3),
            (4, 2), // same x as (4, 1), worse y
            (5, 1), // same y as (4, 1), worse x
        ];
        Assert.Equal(new[] { 1, 4, 2 }, ParetoFront.Indices(points));
    }

    [Fact]
    public void Identical_points_both_stay_and_nan_points_never_join()
    {
        (double, double)[] points = [(1, 1), (1, 1), (double.NaN, 0), (0, double.NaN), (2, 0.5)];
        Assert.Equal(new[] { 0, 1, 4 }, ParetoFront.Indices(points));
        Assert.Empty(ParetoFront.Indices([]));
        Assert.Equal(new[] { 0 }, ParetoFront.Indices([(7, 7)]));
    }
}
