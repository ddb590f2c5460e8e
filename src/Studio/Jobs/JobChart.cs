using ScottPlot;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>
/// A job's figures drawn server-side with ScottPlot (the project's plotting library): one curve per figure against the
/// step, the first on the left axis and the second on its own right axis (a loss and a fraction differ in scale by 10x).
/// </summary>
public static class JobChart
{
    public const int Width = 760;
    public const int Height = 300;

    /// <summary>The PNG of the named figures of <paramref name="points"/> (those that have them), or null when there is nothing to draw.</summary>
    public static byte[]? Png(IReadOnlyList<JobMetrics> points, IReadOnlyList<(string Key, string Name)> figures, string xLabel)
    {
        if (points.Count == 0 || figures.Count == 0) return null;
        var plot = new Plot();
        var colours = new[] { Colors.C0, Colors.C1, Colors.C2 };
        for (int i = 0; i < figures.Count; i++)
        {
            var (key, name) = figures[i];
            var with = points.Where(p => p.Values.TryGetValue(key, out var v) && double.IsFinite(v)).ToList();
            if (with.Count == 0) continue;
            var line = plot.Add.Scatter(with.Select(p => (double)p.Step).ToArray(), with.Select(p => p.Values[key]).ToArray(), colours[i % colours.Length]);
            line.LegendText = name;
            line.MarkerSize = with.Count > 60 ? 0 : 4;
            if (i == 1)
            {
                line.Axes.YAxis = plot.Axes.Right;
                plot.Axes.Right.Label.Text = name;
            }
            else if (i == 0)
            {
                plot.Axes.Left.Label.Text = name;
            }
        }
        plot.Axes.Bottom.Label.Text = xLabel;
        plot.ShowLegend(Alignment.UpperRight);
        return plot.GetImageBytes(Width, Height, ImageFormat.Png);
    }
}
