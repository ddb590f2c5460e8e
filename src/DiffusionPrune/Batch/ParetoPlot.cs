using System.Globalization;
using DiffusionPrune.Imaging;

namespace DiffusionPrune.Batch;

/// <summary>
/// pareto.png: two panels sharing the y axis quantity, FID-proxy (lower is better) against ONNX Runtime latency at one
/// batch size and against parameters. One colour and marker per method (legend), the original as a black star, each
/// point labelled with its target, its 95% FID interval as a bar, and the Pareto front of each panel dashed.
/// </summary>
public static class ParetoPlot
{
    private const int Width = 1500, Height = 670, PanelTop = 48, PanelHeight = 550;
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private static readonly Rgb Ink = Rgb.Hex("#222222"), Grid = Rgb.Hex("#e6e6e6"), Frame = Rgb.Hex("#888888"), FrontColour = Rgb.Hex("#555555");

    private static readonly (string Method, Rgb Colour, MarkerShape Shape)[] Styles =
    [
        ("ecodiff", Rgb.Hex("#1f77b4"), MarkerShape.Circle),
        ("magnitude", Rgb.Hex("#ff7f0e"), MarkerShape.Square),
        ("random", Rgb.Hex("#2ca02c"), MarkerShape.Triangle),
        ("taylor", Rgb.Hex("#d62728"), MarkerShape.Diamond),
    ];

    public static (Rgb colour, MarkerShape shape) StyleOf(string method)
    {
        if (method == BatchItem.OriginalName) return (Ink, MarkerShape.Star);
        int i = Array.FindIndex(Styles, s => s.Method == method);
        return i >= 0 ? (Styles[i].Colour, Styles[i].Shape) : (Rgb.Hex("#9467bd"), MarkerShape.Circle);
    }

    private sealed record Point(double X, double Y, double Lower, double Upper, BatchSummaryRow Row, string Label);

    public static PlotCanvas Render(IReadOnlyList<BatchSummaryRow> rows, int? latencyBatch, string title)
    {
        var canvas = new PlotCanvas(Width, Height, Rgb.White);
        canvas.Text($"FID-proxy against latency and size: {title}", Width / 2.0, 14, Ink, 2, TextAlign.Center);
        bool severalModels = rows.Select(r => r.Model).Distinct().Count() > 1;
        string LabelOf(BatchSummaryRow r)
        {
            string what = r.IsOriginal ? "original" : r.Target is double t ? t.ToString("0.##%", Inv) : r.Method;
            return severalModels ? $"{r.Model} {what}" : what;
        }
        var latencyPoints = latencyBatch is int b
            ? rows.Where(r => r.OnnxMs.ContainsKey(b)).Select(r => new Point(r.OnnxMs[b], r.Fid, r.FidLower, r.FidUpper, r, LabelOf(r))).ToList()
            : [];
        var parameterPoints = rows.Select(r => new Point(r.Parameters, r.Fid, r.FidLower, r.FidUpper, r, LabelOf(r))).ToList();

        Panel(canvas, 0, latencyBatch is int batch ? $"FID-proxy vs ONNX Runtime latency, batch {batch}" : "FID-proxy vs latency",
            latencyBatch is int batch2 ? $"ms per batch of {batch2} (median, ONNX Runtime CPU)" : "ms", latencyPoints, Plain,
            latencyBatch is null ? "latency not measured (plan has \"latency\": null)" : "no finished items with latency yet");
        Panel(canvas, Width / 2, "FID-proxy vs parameters", "parameters", parameterPoints, Si, "no finished items yet");
        Legend(canvas, rows);
        return canvas;
    }

    private static void Panel(PlotCanvas canvas, int x0, string title, string xLabel, List<Point> points, Func<double, double, string> format, string empty)
    {
        var (xMin, xMax, xStep) = points.Count > 0 ? NiceScale(points.Min(p => p.X), points.Max(p => p.X)) : (0, 1, 1);
        var (yMin, yMax, yStep) = points.Count > 0 ? NiceScale(points.Min(p => p.Lower), points.Max(p => p.Upper)) : (0, 1, 1);
        var yTicks = Ticks(yMin, yMax, yStep).Select(y => (y, text: Plain(y, yStep))).ToList();
        // the y axis title, then the widest tick label, then the axis
        const int titleLeft = 14;
        double left = x0 + titleLeft + PlotCanvas.TextHeight() + 16 + yTicks.Max(t => PlotCanvas.TextWidth(t.text)) + 10;
        double right = x0 + Width / 2 - 30, top = PanelTop + 40, bottom = PanelTop + PanelHeight - 75;
        canvas.Text(title, (left + right) / 2, PanelTop + 8, Ink, 2, TextAlign.Center);
        canvas.Text(xLabel, (left + right) / 2, bottom + 46, Ink, 2, TextAlign.Center);
        canvas.Text("FID-proxy (lower is better)", x0 + titleLeft, (top + bottom) / 2, Ink, 2, TextAlign.Center, vertical: true);
        if (points.Count == 0)
        {
            canvas.StrokeRect(left, top, right, bottom, Frame);
            canvas.Text(empty, (left + right) / 2, (top + bottom) / 2 - 7, Frame, 2, TextAlign.Center);
            return;
        }
        double Px(double x) => left + (x - xMin) / (xMax - xMin) * (right - left);
        double Py(double y) => bottom - (y - yMin) / (yMax - yMin) * (bottom - top);

        // 1. grid and tick labels
        int textHeight = PlotCanvas.TextHeight();
        foreach (double x in Ticks(xMin, xMax, xStep))
        {
            canvas.Line(Px(x), top, Px(x), bottom, Grid);
            canvas.Line(Px(x), bottom, Px(x), bottom + 5, Frame);
            canvas.Text(format(x, xStep), Px(x), bottom + 12, Ink, 2, TextAlign.Center);
        }
        foreach (var (y, text) in yTicks)
        {
            canvas.Line(left, Py(y), right, Py(y), Grid);
            canvas.Line(left - 5, Py(y), left, Py(y), Frame);
            canvas.Text(text, left - 10, Py(y) - textHeight / 2.0, Ink, 2, TextAlign.Right);
        }

        // 2. the Pareto front under the points
        var front = ParetoFront.Indices(points.Select(p => (p.X, p.Y)).ToList());
        for (int i = 1; i < front.Count; i++)
            canvas.Line(Px(points[front[i - 1]].X), Py(points[front[i - 1]].Y), Px(points[front[i]].X), Py(points[front[i]].Y), FrontColour, 1.6, dash: 6);

        // 3. interval bars, markers, then labels placed clear of markers and each other
        foreach (var p in points)
        {
            var (colour, _) = StyleOf(p.Row.Method);
            canvas.Line(Px(p.X), Py(p.Lower), Px(p.X), Py(p.Upper), colour, 1.2);
            canvas.Line(Px(p.X) - 4, Py(p.Lower), Px(p.X) + 4, Py(p.Lower), colour, 1.2);
            canvas.Line(Px(p.X) - 4, Py(p.Upper), Px(p.X) + 4, Py(p.Upper), colour, 1.2);
        }
        var taken = points.Select(p => (Px(p.X) - 8, Py(p.Y) - 8, Px(p.X) + 8, Py(p.Y) + 8)).ToList();
        foreach (var p in points.OrderBy(p => p.Row.IsOriginal ? 1 : 0))
        {
            var (colour, shape) = StyleOf(p.Row.Method);
            canvas.Marker(shape, Px(p.X), Py(p.Y), p.Row.IsOriginal ? 18 : 13, colour, p.Row.IsOriginal ? Rgb.Black : Ink);
        }
        foreach (var p in points)
        {
            double cx = Px(p.X), cy = Py(p.Y);
            int w = PlotCanvas.TextWidth(p.Label);
            (double, double)[] candidates =
            [
                (cx + 11, cy - textHeight - 6), (cx + 11, cy + 6), (cx - 11 - w, cy - textHeight - 6), (cx - 11 - w, cy + 6),
                (cx - w / 2.0, cy - textHeight - 14), (cx - w / 2.0, cy + 14), (cx + 14, cy - textHeight / 2.0), (cx - 14 - w, cy - textHeight / 2.0),
            ];
            var (lx, ly) = candidates.FirstOrDefault(c => c.Item1 >= left + 2 && c.Item1 + w <= right - 2 && c.Item2 >= top + 2 && c.Item2 + textHeight <= bottom - 2
                && !taken.Any(t => Overlaps(t, (c.Item1 - 2, c.Item2 - 2, c.Item1 + w + 2, c.Item2 + textHeight + 2))), candidates[0]);
            canvas.Text(p.Label, lx, ly, p.Row.IsOriginal ? Rgb.Black : StyleOf(p.Row.Method).colour, 2);
            taken.Add((lx - 2, ly - 2, lx + w + 2, ly + textHeight + 2));
        }
        canvas.StrokeRect(left, top, right, bottom, Frame, 1.2);
    }

    private static bool Overlaps((double l, double t, double r, double b) a, (double l, double t, double r, double b) c) =>
        a.l < c.r && c.l < a.r && a.t < c.b && c.t < a.b;

    private static void Legend(PlotCanvas canvas, IReadOnlyList<BatchSummaryRow> rows)
    {
        var entries = new List<(string label, Action<double, double> draw)>();
        foreach (var method in rows.Where(r => !r.IsOriginal).Select(r => r.Method).Distinct())
        {
            var (colour, shape) = StyleOf(method);
            entries.Add((method, (x, y) => canvas.Marker(shape, x + 10, y, 13, colour, Ink)));
        }
        entries.Add(("original", (x, y) => canvas.Marker(MarkerShape.Star, x + 10, y, 18, Ink, Rgb.Black)));
        entries.Add(("Pareto front", (x, y) => canvas.Line(x, y, x + 30, y, FrontColour, 1.6, dash: 6)));
        entries.Add(("95% FID interval", (x, y) =>
        {
            canvas.Line(x + 10, y - 9, x + 10, y + 9, Frame, 1.2);
            canvas.Line(x + 6, y - 9, x + 14, y - 9, Frame, 1.2);
            canvas.Line(x + 6, y + 9, x + 14, y + 9, Frame, 1.2);
        }));
        const int symbol = 34, gap = 32;
        double total = entries.Sum(e => symbol + 8 + PlotCanvas.TextWidth(e.label)) + gap * (entries.Count - 1);
        double xCursor = (Width - total) / 2, y = PanelTop + PanelHeight + 30;
        foreach (var (label, draw) in entries)
        {
            draw(xCursor, y);
            canvas.Text(label, xCursor + symbol + 8, y - PlotCanvas.TextHeight() / 2.0, Ink, 2);
            xCursor += symbol + 8 + PlotCanvas.TextWidth(label) + gap;
        }
    }

    /// <summary>min, min + step, ... up to max, computed by multiplication so rounding errors do not add up.</summary>
    private static IEnumerable<double> Ticks(double min, double max, double step)
    {
        for (int i = 0; min + i * step <= max + step / 2; i++) yield return min + i * step;
    }

    /// <summary>Axis bounds on round numbers around [lo, hi] (padded 5%), and a tick step of 1, 2 or 5 x 10^k.</summary>
    public static (double min, double max, double step) NiceScale(double lo, double hi, int maxTicks = 6)
    {
        if (!(hi > lo))
        {
            double pad = Math.Abs(lo) * 0.1;
            if (pad == 0) pad = 1;
            lo -= pad;
            hi += pad;
        }
        double margin = (hi - lo) * 0.05;
        lo -= margin;
        hi += margin;
        double step = NiceNumber(NiceNumber(hi - lo, false) / (maxTicks - 1), true);
        return (Math.Floor(lo / step) * step, Math.Ceiling(hi / step) * step, step);
    }

    private static double NiceNumber(double x, bool round)
    {
        double exponent = Math.Floor(Math.Log10(x));
        double fraction = x / Math.Pow(10, exponent);
        double nice = round
            ? fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10
            : fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
        return nice * Math.Pow(10, exponent);
    }

    private static int Decimals(double step) => Math.Max(0, -(int)Math.Floor(Math.Log10(step) + 1e-9));

    private static string Plain(double value, double step) => (Math.Abs(value) < step / 1e6 ? 0 : value).ToString("F" + Decimals(step), Inv);

    /// <summary>Parameters as 850k, 1.25M.</summary>
    private static string Si(double value, double step) => Math.Abs(value) >= 1e6 || step >= 1e6 ? Plain(value / 1e6, step / 1e6) + "M"
        : Math.Abs(value) >= 1e3 || step >= 1e3 ? Plain(value / 1e3, step / 1e3) + "k"
        : Plain(value, step);
}
