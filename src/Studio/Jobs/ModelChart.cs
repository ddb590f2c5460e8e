using DiffusionPrune.Analysis;
using ScottPlot;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>A model's parameters and MACs per block, drawn server-side with ScottPlot (the Studio's chart library): two horizontal bar charts.</summary>
public static class ModelChart
{
    public const int Width = 560;

    /// <summary>PNGs of <paramref name="parts"/>' parameters and MACs, one bar per block, in forward order from the top.</summary>
    public static (byte[] Parameters, byte[] Macs) Png(IReadOnlyList<PartCost> parts)
    {
        int height = Math.Max(260, 70 + 22 * parts.Count);
        return (Panel(parts, p => p.Parameters, "parameters", Colors.C0).GetImageBytes(Width, height, ImageFormat.Png),
                Panel(parts, p => p.Macs, "MACs per image", Colors.C1).GetImageBytes(Width, height, ImageFormat.Png));
    }

    private static Plot Panel(IReadOnlyList<PartCost> parts, Func<PartCost, long> value, string label, Color colour)
    {
        var plot = new Plot();
        var bars = parts.Select((p, i) => new Bar { Position = parts.Count - 1 - i, Value = value(p), FillColor = colour, Orientation = Orientation.Horizontal }).ToList();
        plot.Add.Bars(bars);
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            parts.Select((_, i) => (double)(parts.Count - 1 - i)).ToArray(), parts.Select(p => p.Name).ToArray());
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { LabelFormatter = Si };
        plot.Axes.Bottom.Label.Text = label;
        plot.Axes.Margins(left: 0, right: 0.1, bottom: 0.02, top: 0.02);
        plot.HideGrid();
        return plot;
    }

    private static string Si(double v) => Math.Abs(v) switch
    {
        >= 1e9 => $"{v / 1e9:0.#}G",
        >= 1e6 => $"{v / 1e6:0.#}M",
        >= 1e3 => $"{v / 1e3:0.#}k",
        _ => $"{v:0}",
    };
}
