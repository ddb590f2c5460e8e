using System.Globalization;
using DiffusionPrune.Batch;
using ScottPlot;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using Image = SixLabors.ImageSharp.Image;

namespace DiffusionPrune.Evaluation;

/// <summary>
/// A comparison's figures, drawn with ScottPlot (the project's plotting library) and composed with ImageSharp:
/// the same-seed grids side by side with each model's difference from the reference below it, the Pareto chart of
/// FID-proxy against ONNX Runtime latency and parameters (<see cref="ParetoPlot"/>), and a heat map of the kept
/// fraction per layer, one row per pruned model. comparison.png stacks all three, for export.
/// </summary>
public static class ComparisonFigures
{
    public const int PanelSize = 300;
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Writes comparison.png, pareto.png and (when a model records kept fractions) kept-layers.png into <paramref name="folder"/>.</summary>
    public static void Write(ComparisonReport report, string folder)
    {
        byte[] grids = Grids(report, folder);
        byte[] pareto = ParetoPlot.RenderPng(report.Models.Select(Row).ToList(), report.LatencyBatch, "Comparison",
            "latency not measured in this comparison");
        Runtime.AtomicFile.Replace(Path.Combine(folder, ComparisonReport.ParetoName), pareto);
        byte[]? heatMap = HeatMap(report);
        if (heatMap is not null) Runtime.AtomicFile.Replace(Path.Combine(folder, ComparisonReport.HeatMapName), heatMap);
        Runtime.AtomicFile.Replace(Path.Combine(folder, ComparisonReport.PngName), Stack([grids, pareto, .. heatMap is null ? Array.Empty<byte[]>() : [heatMap]]));
    }

    /// <summary>A compared model as a row of the batch summary, so the Pareto chart is the batch's own.</summary>
    public static BatchSummaryRow Row(ComparedModel m) => new(
        m.Name, m.IsReference ? BatchItem.OriginalName : m.Method, m.Target, m.RemovedParams, m.Parameters, m.Macs, m.Fid, m.FidLower, m.FidUpper, m.Kid, m.Ssim,
        m.Onnx is { } onnx ? new Dictionary<int, double> { [onnx.Batch] = onnx.MedianMs } : [],
        m.Torch is { } torch ? new Dictionary<int, double> { [torch.Batch] = torch.MedianMs } : []);

    /// <summary>The grids in a row, titled with each model's name and FID-proxy; below each, its difference from the reference.</summary>
    private static byte[] Grids(ComparisonReport report, string folder)
    {
        var top = report.Models.Select(m => Picture(Path.Combine(folder, m.Grid),
            string.Create(Inv, $"{m.Name}\nFID-proxy {m.Fid:F1} [{m.FidLower:F1}, {m.FidUpper:F1}]"))).ToList();
        var bottom = report.Models.Select(m => m.Difference is { } d
            ? Picture(Path.Combine(folder, d), string.Create(Inv, $"|{m.Name} - {report.Models[0].Name}|\nmean {m.MeanAbsoluteDifference:F1} grey levels, SSIM {m.Ssim:F3}"))
            : Picture(null, "differences from the reference:\nblack same, white off by half the range")).ToList();
        using var figure = new Image<Rgb24>(PanelSize * top.Count, 2 * (PanelSize + 50), new Rgb24(255, 255, 255));
        for (int i = 0; i < top.Count; i++)
        {
            using var a = Image.Load<Rgb24>(top[i]);
            using var b = Image.Load<Rgb24>(bottom[i]);
            int x = i * PanelSize;
            figure.Mutate(c => c.DrawImage(a, new SixLabors.ImageSharp.Point(x, 0), 1f).DrawImage(b, new SixLabors.ImageSharp.Point(x, PanelSize + 50), 1f));
        }
        return Png(figure);
    }

    /// <summary>A picture (or an empty panel) under a two-line title.</summary>
    private static byte[] Picture(string? png, string title)
    {
        using var plot = new Plot();
        plot.Title(title, size: 12);
        if (png is not null)
        {
            using var image = new ScottPlot.Image(png);
            plot.Add.ImageRect(image, new CoordinateRect(0, image.Width, 0, image.Height));
            plot.Axes.SetLimits(0, image.Width, 0, image.Height);
            plot.Axes.SquareUnits();
        }
        plot.HideAxesAndGrid();
        plot.Axes.Title.IsVisible = true;
        return plot.GetImageBytes(PanelSize, PanelSize + 50, ImageFormat.Png);
    }

    /// <summary>Kept fraction per layer, one row per model that records one (the reference keeps everything); null when none does.</summary>
    private static byte[]? HeatMap(ComparisonReport report)
    {
        var rows = report.Models.Where(m => m.KeptFractionPerLayer.Count > 0).ToList();
        if (rows.Count == 0) return null;
        var layers = rows.SelectMany(m => m.KeptFractionPerLayer.Keys).Distinct().Order(StringComparer.Ordinal).ToList();
        var values = new double[rows.Count, layers.Count];
        for (int r = 0; r < rows.Count; r++)
            for (int c = 0; c < layers.Count; c++)
                values[r, c] = rows[r].KeptFractionPerLayer.TryGetValue(layers[c], out var v) ? v : double.NaN; // not prunable by that method
        using var plot = new Plot();
        plot.Title("Kept fraction per layer (dark: cut, light: kept)", size: 14);
        var heat = plot.Add.Heatmap(values);
        heat.Colormap = new ScottPlot.Colormaps.Viridis();
        heat.Extent = new CoordinateRect(0, layers.Count, 0, rows.Count);
        heat.FlipVertically = true; // row 0 at the top, as the table lists it
        plot.Add.ColorBar(heat);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            layers.Select((_, i) => i + 0.5).ToArray(), layers.Select(Shorten).ToArray());
        plot.Axes.Bottom.TickLabelStyle.Rotation = -90;
        plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleRight;
        plot.Axes.Bottom.TickLabelStyle.FontSize = 10;
        plot.Axes.Bottom.MinimumSize = 12 + 7 * Math.Min(40, layers.Max(l => Shorten(l).Length));
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            rows.Select((_, i) => rows.Count - i - 0.5).ToArray(), rows.Select(m => m.Name).ToArray());
        plot.Axes.SetLimits(0, layers.Count, 0, rows.Count);
        int width = Math.Clamp(200 + 14 * layers.Count, 700, 2400);
        return plot.GetImageBytes(width, 200 + 40 * rows.Count + 7 * Math.Min(40, layers.Max(l => Shorten(l).Length)), ImageFormat.Png);
    }

    /// <summary>A layer path short enough to label a column: "down_blocks.1.resnets.0.conv1" stays, longer ones lose their middle.</summary>
    private static string Shorten(string layer) => layer.Length <= 40 ? layer : layer[..18] + "…" + layer[^21..];

    private static byte[] Stack(IReadOnlyList<byte[]> pngs)
    {
        var images = pngs.Select(p => Image.Load<Rgb24>(p)).ToList();
        try
        {
            using var figure = new Image<Rgb24>(images.Max(i => i.Width), images.Sum(i => i.Height), new Rgb24(255, 255, 255));
            int y = 0;
            foreach (var image in images)
            {
                int at = y;
                figure.Mutate(c => c.DrawImage(image, new SixLabors.ImageSharp.Point(0, at), 1f));
                y += image.Height;
            }
            return Png(figure);
        }
        finally
        {
            foreach (var image in images) image.Dispose();
        }
    }

    private static byte[] Png(Image<Rgb24> image)
    {
        using var stream = new MemoryStream();
        image.SaveAsPng(stream);
        return stream.ToArray();
    }
}
