using DiffusionPrune.Imaging;

namespace DiffusionPrune.Tests.Imaging;

public class PlotCanvasTests
{
    private static (int left, int top, int right, int bottom) InkBounds(PlotCanvas canvas)
    {
        int left = int.MaxValue, top = int.MaxValue, right = -1, bottom = -1;
        for (int y = 0; y < canvas.Height; y++)
            for (int x = 0; x < canvas.Width; x++)
                if (canvas[x, y] != Rgb.White)
                {
                    left = Math.Min(left, x); right = Math.Max(right, x);
                    top = Math.Min(top, y); bottom = Math.Max(bottom, y);
                }
        return (left, top, right, bottom);
    }

    [Fact]
    public void Text_covers_its_measured_box_horizontally_and_rotated()
    {
        var canvas = new PlotCanvas(200, 100, Rgb.White);
        canvas.Text("FID 12%", 10, 20, Rgb.Black, scale: 2);
        var (left, top, right, bottom) = InkBounds(canvas);
        Assert.Equal(10, left);
        Assert.Equal(20, top);
        Assert.Equal(10 + PlotCanvas.TextWidth("FID 12%") - 1, right);
        Assert.Equal(20 + PlotCanvas.TextHeight() - 1, bottom);

        var vertical = new PlotCanvas(100, 200, Rgb.White);
        vertical.Text("Hi", 30, 100, Rgb.Black, scale: 2, align: TextAlign.Center, vertical: true);
        (left, top, right, bottom) = InkBounds(vertical);
        Assert.Equal(30, left);
        Assert.Equal(30 + PlotCanvas.TextHeight() - 1, right);
        Assert.InRange(bottom - top + 1, PlotCanvas.TextWidth("Hi") - 2, PlotCanvas.TextWidth("Hi"));
        Assert.InRange((top + bottom) / 2.0, 98, 102);
    }

    [Fact]
    public void Every_printable_ascii_character_has_a_glyph_distinct_from_the_unknown_box()
    {
        var box = BitmapFont.Glyph('\u2603');
        for (char c = '!'; c <= '~'; c++)
        {
            var glyph = BitmapFont.Glyph(c);
            bool same = true;
            for (int y = 0; y < BitmapFont.GlyphHeight; y++)
                for (int x = 0; x < BitmapFont.GlyphWidth; x++)
                    same &= glyph[y, x] == box[y, x];
            Assert.False(same, $"'{c}' has no glyph");
        }
    }

    [Fact]
    public void Markers_and_lines_are_drawn_where_asked_and_the_png_encodes()
    {
        var canvas = new PlotCanvas(60, 40, Rgb.White);
        canvas.Marker(MarkerShape.Star, 30, 20, 16, Rgb.Hex("#1f77b4"), Rgb.Black);
        Assert.NotEqual(Rgb.White, canvas[30, 20]);
        Assert.Equal(Rgb.White, canvas[2, 2]);
        canvas.Line(0, 35.5, 60, 35.5, Rgb.Black, 1);
        Assert.Equal(Rgb.Black, canvas[10, 35]);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, canvas.ToPng()[..4]);
    }
}
