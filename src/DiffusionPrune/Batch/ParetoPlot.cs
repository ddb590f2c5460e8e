using System.Globalization;
using ScottPlot;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using Color = ScottPlot.Color;
using Image = SixLabors.ImageSharp.Image;

namespace DiffusionPrune.Batch;

/// <summary>
/// pareto.png, drawn with ScottPlot: two panels sharing the y axis quantity, FID-proxy (lower is better) against ONNX
/// Runtime latency at one batch size and against parameters. One colour and marker per method (legend), the original as
/// a black star, each point labelled with its target, its 95% FID interval as a bar, and each panel's Pareto front
/// dashed. The panels are composed side by side with ImageSharp.
/// </summary>
public static class ParetoPlot
{
    public const int PanelWidth = 750, Height = 620;
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private static readonly Color Ink = Color.FromHex("#222222"), FrontColour = Color.FromHex("#555555");

    private static readonly (string Method, Color Colour, MarkerShape Shape)[] Styles =
    [
        ("ecodiff", Color.FromHex("#1f77b4"), MarkerShape.FilledCircle),
        ("magnitude", Color.FromHex("#ff7f0e"), MarkerShape.FilledSquare),
        ("random", Color.FromHex("#2ca02c"), MarkerShape.FilledTriangleUp),
        ("taylor", Color.FromHex("#d62728"), MarkerShape.FilledDiamond),
    ];

    /// <summary>A method's colour and marker (the original: black asterisk); methods without a style share purple circles.</summary>
    public static (Color Colour, MarkerShape Shape) StyleOf(string method)
    {
        if (method == BatchItem.OriginalName) return (Colors.Black, MarkerShape.Asterisk);
        int i = Array.FindIndex(Styles, s => s.Method == method);
        return i >= 0 ? (Styles[i].Colour, Styles[i].Shape) : (Color.FromHex("#9467bd"), MarkerShape.FilledCircle);
    }

    private sealed record Point(double X, BatchSummaryRow Row, string Label);

    /// <summary>The two panels side by side as one PNG.</summary>
    /// <param name="notMeasured">What the latency panel says when <paramref name="latencyBatch"/> is null.</param>
    public static byte[] RenderPng(IReadOnlyList<BatchSummaryRow> rows, int? latencyBatch, string title,
        string notMeasured = "latency not measured (plan has \"latency\": null)")
    {
        bool severalModels = rows.Select(r => r.Model).Distinct().Count() > 1;
        string LabelOf(BatchSummaryRow r)
        {
            string what = r.IsOriginal ? "original" : r.Target is double t ? t.ToString("0.##%", Inv) : r.Method;
            return severalModels ? $"{r.Model} {what}" : what;
        }
        var latencyPoints = latencyBatch is int b
            ? rows.Where(r => r.OnnxMs.ContainsKey(b)).Select(r => new Point(r.OnnxMs[b], r, LabelOf(r))).ToList()
            : [];
        var parameterPoints = rows.Select(r => new Point(r.Parameters, r, LabelOf(r))).ToList();

        byte[] left = Panel($"{title}: FID-proxy vs ONNX Runtime latency" + (latencyBatch is int batch ? $", batch {batch}" : ""),
            latencyBatch is int batch2 ? $"ms per batch of {batch2} (median, ONNX Runtime CPU)" : "ms", latencyPoints, null,
            latencyBatch is null ? notMeasured : "no finished items with latency yet");
        byte[] right = Panel($"{title}: FID-proxy vs parameters", "parameters", parameterPoints, Si, "no finished items yet");

        using var figure = new Image<Rgb24>(2 * PanelWidth, Height, new Rgb24(255, 255, 255));
        using (var a = Image.Load<Rgb24>(left))
        using (var c = Image.Load<Rgb24>(right))
            figure.Mutate(x => x.DrawImage(a, new SixLabors.ImageSharp.Point(0, 0), 1f).DrawImage(c, new SixLabors.ImageSharp.Point(PanelWidth, 0), 1f));
        using var png = new MemoryStream();
        figure.SaveAsPng(png);
        return png.ToArray();
    }

    /// <summary>Writes <see cref="RenderPng"/> to <paramref name="path"/> whole (a reader never sees half a picture).</summary>
    public static void Save(string path, IReadOnlyList<BatchSummaryRow> rows, int? latencyBatch, string title)
    {
        Runtime.AtomicFile.Replace(path, RenderPng(rows, latencyBatch, title));
    }

    private static byte[] Panel(string title, string xLabel, List<Point> points, Func<double, string>? format, string empty)
    {
        var plot = new Plot();
        plot.Title(title, size: 15);
        plot.XLabel(xLabel, size: 14);
        plot.YLabel("FID-proxy (lower is better)", size: 14);
        if (format is not null)
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { LabelFormatter = format };
        if (points.Count == 0)
        {
            var note = plot.Add.Text(empty, 0.5, 0.5);
            note.Alignment = Alignment.MiddleCenter;
            note.LabelStyle.FontSize = 14;
            note.LabelStyle.ForeColor = FrontColour;
            plot.Axes.SetLimits(0, 1, 0, 1);
            plot.HideGrid();
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual();
            plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual();
            return plot.GetImageBytes(PanelWidth, Height, ImageFormat.Png);
        }

        // The Pareto front under the points, then the intervals, the markers (one series per method: the legend) and labels.
        var front = ParetoFront.Indices(points.Select(p => (p.X, p.Row.Fid)).ToList());
        if (front.Count > 1)
        {
            var line = plot.Add.Scatter(front.Select(i => points[i].X).ToArray(), front.Select(i => points[i].Row.Fid).ToArray(), FrontColour);
            line.MarkerShape = MarkerShape.None;
            line.LinePattern = LinePattern.Dashed;
            line.LineWidth = 1.6f;
            line.LegendText = "Pareto front";
        }
        // Labels to the right of their marker, except in the right quarter, where they would leave the panel.
        double xMin = points.Min(p => p.X), xMax = points.Max(p => p.X), rightQuarter = xMax - (xMax - xMin) / 4;
        foreach (var group in points.GroupBy(p => p.Row.Method).OrderBy(g => g.Key == BatchItem.OriginalName ? 1 : 0))
        {
            var (colour, shape) = StyleOf(group.Key);
            var xs = group.Select(p => p.X).ToArray();
            var ys = group.Select(p => p.Row.Fid).ToArray();
            var bars = plot.Add.ErrorBar(xs, ys, group.Select(p => p.Row.FidUpper - p.Row.Fid).ToArray());
            bars.YErrorNegative = group.Select(p => p.Row.Fid - p.Row.FidLower).ToArray();
            bars.Color = colour.WithAlpha(0.6);
            bars.LineWidth = 1.2f;
            var markers = plot.Add.Scatter(xs, ys, colour);
            markers.LineWidth = 0;
            markers.MarkerShape = shape;
            markers.MarkerSize = group.Key == BatchItem.OriginalName ? 18 : 11;
            markers.LegendText = group.Key == BatchItem.OriginalName ? "original" : group.Key;
            foreach (var p in group)
            {
                var label = plot.Add.Text(p.Label, p.X, p.Row.Fid);
                label.LabelStyle.FontSize = 12;
                label.LabelStyle.ForeColor = p.Row.IsOriginal ? Ink : colour;
                bool toTheLeft = xMax > xMin && p.X > rightQuarter;
                label.OffsetX = toTheLeft ? -8 : 8;
                label.OffsetY = -8;
                label.Alignment = toTheLeft ? Alignment.LowerRight : Alignment.LowerLeft;
            }
        }
        var intervalKey = plot.Add.Scatter(Array.Empty<double>(), Array.Empty<double>(), FrontColour);
        intervalKey.MarkerShape = MarkerShape.VerticalBar;
        intervalKey.LineWidth = 0;
        intervalKey.LegendText = "bar: 95% FID interval";
        plot.ShowLegend(Edge.Bottom); // below the panel, never over a point
        plot.Axes.Margins(0.12, 0.1);
        return plot.GetImageBytes(PanelWidth, Height, ImageFormat.Png);
    }

    /// <summary>Parameters as 850k, 1.25M.</summary>
    private static string Si(double value) => Math.Abs(value) >= 1e6 ? (value / 1e6).ToString("0.##", Inv) + "M"
        : Math.Abs(value) >= 1e3 ? (value / 1e3).ToString("0.##", Inv) + "k"
        : value.ToString("0.##", Inv);
}
