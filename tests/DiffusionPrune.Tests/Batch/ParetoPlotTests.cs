using DiffusionPrune.Batch;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace DiffusionPrune.Tests.Batch;

/// <summary>pareto.png through ScottPlot and ImageSharp: two panels, each method in its colour, empty panels say why.</summary>
public class ParetoPlotTests
{
    private static BatchSummaryRow Row(string method, double? target, long parameters, double fid, double ms) =>
        new("tiny", method, target, target ?? 0, parameters, parameters * 40, fid, fid - 5, fid + 5, 1.0, 0.9,
            new Dictionary<int, double> { [1] = ms }, new Dictionary<int, double>());

    private static int Count(Image<Rgb24> image, int x0, int x1, Rgb24 colour)
    {
        int n = 0;
        for (int y = 0; y < image.Height; y++)
            for (int x = x0; x < x1; x++)
                if (image[x, y].Equals(colour)) n++;
        return n;
    }

    [Fact]
    public void Both_panels_draw_each_method_in_its_colour()
    {
        var rows = new[]
        {
            Row(BatchItem.OriginalName, null, 1000, 100, 10),
            Row("ecodiff", 0.2, 800, 110, 8),
            Row("magnitude", 0.2, 800, 140, 8),
            Row("ecodiff", 0.4, 600, 150, 6),
        };
        using var image = Image.Load<Rgb24>(ParetoPlot.RenderPng(rows, latencyBatch: 1, "plan.json"));
        Assert.Equal((2 * ParetoPlot.PanelWidth, ParetoPlot.Height), (image.Width, image.Height));
        var ecodiff = new Rgb24(0x1f, 0x77, 0xb4);
        var magnitude = new Rgb24(0xff, 0x7f, 0x0e);
        foreach (var (x0, x1) in new[] { (0, ParetoPlot.PanelWidth), (ParetoPlot.PanelWidth, 2 * ParetoPlot.PanelWidth) })
        {
            Assert.True(Count(image, x0, x1, ecodiff) > 50, "ecodiff markers");
            Assert.True(Count(image, x0, x1, magnitude) > 30, "magnitude markers");
        }
        Assert.Equal(0, Count(image, 0, image.Width, new Rgb24(0x2c, 0xa0, 0x2c))); // no random items, no random colour
    }

    [Fact]
    public void A_plan_without_latency_or_finished_items_still_draws_both_panels()
    {
        using var image = Image.Load<Rgb24>(ParetoPlot.RenderPng([], latencyBatch: null, "plan.json"));
        Assert.Equal(2 * ParetoPlot.PanelWidth, image.Width);
        // Each panel says why it is empty, in text across its middle.
        foreach (int x0 in new[] { 0, ParetoPlot.PanelWidth })
        {
            int inked = 0;
            for (int y = ParetoPlot.Height / 2 - 30; y < ParetoPlot.Height / 2 + 10; y++)
                for (int x = x0 + 200; x < x0 + ParetoPlot.PanelWidth - 200; x++)
                    if (image[x, y].R < 160) inked++;
            Assert.True(inked > 40, $"panel at {x0}: {inked} dark pixels in the middle");
        }
    }
}
