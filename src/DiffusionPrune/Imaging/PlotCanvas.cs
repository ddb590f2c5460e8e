// TorchSharp-free. Use only the BCL here.
namespace DiffusionPrune.Imaging;

/// <summary>An sRGB colour.</summary>
public readonly record struct Rgb(byte R, byte G, byte B)
{
    public static readonly Rgb White = new(255, 255, 255);
    public static readonly Rgb Black = new(0, 0, 0);

    /// <summary>From "#rrggbb".</summary>
    public static Rgb Hex(string hex) => new(Convert.ToByte(hex[1..3], 16), Convert.ToByte(hex[3..5], 16), Convert.ToByte(hex[5..7], 16));
}

public enum MarkerShape { Circle, Square, Triangle, Diamond, Star }

public enum TextAlign { Left, Center, Right }

/// <summary>
/// An RGB raster with the few anti-aliased primitives a chart needs (lines, dashes, filled shapes, markers) and
/// text in <see cref="BitmapFont"/>; saved with our own <see cref="PngWriter"/>. Coordinates are pixels, y down,
/// pixel centres at +0.5.
/// </summary>
public sealed class PlotCanvas
{
    private readonly byte[] _pixels;

    public int Width { get; }
    public int Height { get; }

    public PlotCanvas(int width, int height, Rgb background)
    {
        Width = width;
        Height = height;
        _pixels = new byte[width * height * 3];
        for (int i = 0; i < _pixels.Length; i += 3)
        {
            _pixels[i] = background.R;
            _pixels[i + 1] = background.G;
            _pixels[i + 2] = background.B;
        }
    }

    public Rgb this[int x, int y]
    {
        get
        {
            int i = (y * Width + x) * 3;
            return new Rgb(_pixels[i], _pixels[i + 1], _pixels[i + 2]);
        }
    }

    /// <summary>Mixes <paramref name="colour"/> into one pixel with weight <paramref name="alpha"/> in [0, 1].</summary>
    public void Blend(int x, int y, Rgb colour, double alpha)
    {
        if (x < 0 || y < 0 || x >= Width || y >= Height || alpha <= 0) return;
        if (alpha > 1) alpha = 1;
        int i = (y * Width + x) * 3;
        _pixels[i] = (byte)Math.Round(_pixels[i] + (colour.R - _pixels[i]) * alpha);
        _pixels[i + 1] = (byte)Math.Round(_pixels[i + 1] + (colour.G - _pixels[i + 1]) * alpha);
        _pixels[i + 2] = (byte)Math.Round(_pixels[i + 2] + (colour.B - _pixels[i + 2]) * alpha);
    }

    public void FillRect(double left, double top, double right, double bottom, Rgb colour)
    {
        for (int y = Math.Max(0, (int)Math.Round(top)); y < Math.Min(Height, (int)Math.Round(bottom)); y++)
            for (int x = Math.Max(0, (int)Math.Round(left)); x < Math.Min(Width, (int)Math.Round(right)); x++)
                Blend(x, y, colour, 1);
    }

    public void StrokeRect(double left, double top, double right, double bottom, Rgb colour, double width = 1)
    {
        Line(left, top, right, top, colour, width);
        Line(right, top, right, bottom, colour, width);
        Line(right, bottom, left, bottom, colour, width);
        Line(left, bottom, left, top, colour, width);
    }

    /// <summary>An anti-aliased line; with <paramref name="dash"/> &gt; 0 it is dashed (dash and gap of that length).</summary>
    public void Line(double x0, double y0, double x1, double y1, Rgb colour, double width = 1, double dash = 0)
    {
        double length = Math.Sqrt((x1 - x0) * (x1 - x0) + (y1 - y0) * (y1 - y0));
        if (dash > 0 && length > dash)
        {
            for (double s = 0; s < length; s += 2 * dash)
            {
                double e = Math.Min(length, s + dash);
                Segment(x0 + (x1 - x0) * s / length, y0 + (y1 - y0) * s / length, x0 + (x1 - x0) * e / length, y0 + (y1 - y0) * e / length, colour, width);
            }
            return;
        }
        Segment(x0, y0, x1, y1, colour, width);
    }

    /// <summary>Coverage from the distance of each pixel centre to the segment: a capsule of the given width.</summary>
    private void Segment(double x0, double y0, double x1, double y1, Rgb colour, double width)
    {
        double half = width / 2;
        int left = (int)Math.Floor(Math.Min(x0, x1) - half - 1), right = (int)Math.Ceiling(Math.Max(x0, x1) + half + 1);
        int top = (int)Math.Floor(Math.Min(y0, y1) - half - 1), bottom = (int)Math.Ceiling(Math.Max(y0, y1) + half + 1);
        double dx = x1 - x0, dy = y1 - y0, lengthSquared = dx * dx + dy * dy;
        for (int y = Math.Max(0, top); y <= Math.Min(Height - 1, bottom); y++)
            for (int x = Math.Max(0, left); x <= Math.Min(Width - 1, right); x++)
            {
                double px = x + 0.5 - x0, py = y + 0.5 - y0;
                double t = lengthSquared == 0 ? 0 : Math.Clamp((px * dx + py * dy) / lengthSquared, 0, 1);
                double ex = px - t * dx, ey = py - t * dy;
                double distance = Math.Sqrt(ex * ex + ey * ey);
                Blend(x, y, colour, Math.Clamp(half + 0.5 - distance, 0, 1));
            }
    }

    public void FillCircle(double cx, double cy, double radius, Rgb colour)
    {
        for (int y = Math.Max(0, (int)(cy - radius - 1)); y <= Math.Min(Height - 1, (int)(cy + radius + 1)); y++)
            for (int x = Math.Max(0, (int)(cx - radius - 1)); x <= Math.Min(Width - 1, (int)(cx + radius + 1)); x++)
            {
                double distance = Math.Sqrt((x + 0.5 - cx) * (x + 0.5 - cx) + (y + 0.5 - cy) * (y + 0.5 - cy));
                Blend(x, y, colour, Math.Clamp(radius + 0.5 - distance, 0, 1));
            }
    }

    public void StrokeCircle(double cx, double cy, double radius, Rgb colour, double width = 1)
    {
        for (int y = Math.Max(0, (int)(cy - radius - width - 1)); y <= Math.Min(Height - 1, (int)(cy + radius + width + 1)); y++)
            for (int x = Math.Max(0, (int)(cx - radius - width - 1)); x <= Math.Min(Width - 1, (int)(cx + radius + width + 1)); x++)
            {
                double distance = Math.Abs(Math.Sqrt((x + 0.5 - cx) * (x + 0.5 - cx) + (y + 0.5 - cy) * (y + 0.5 - cy)) - radius);
                Blend(x, y, colour, Math.Clamp(width / 2 + 0.5 - distance, 0, 1));
            }
    }

    /// <summary>A filled polygon (even-odd rule), anti-aliased by 4 x 4 supersampling.</summary>
    public void FillPolygon(IReadOnlyList<(double X, double Y)> points, Rgb colour)
    {
        int left = (int)Math.Floor(points.Min(p => p.X)), right = (int)Math.Ceiling(points.Max(p => p.X));
        int top = (int)Math.Floor(points.Min(p => p.Y)), bottom = (int)Math.Ceiling(points.Max(p => p.Y));
        for (int y = Math.Max(0, top); y <= Math.Min(Height - 1, bottom); y++)
            for (int x = Math.Max(0, left); x <= Math.Min(Width - 1, right); x++)
            {
                int hits = 0;
                for (int sy = 0; sy < 4; sy++)
                    for (int sx = 0; sx < 4; sx++)
                        if (Inside(points, x + (sx + 0.5) / 4, y + (sy + 0.5) / 4)) hits++;
                Blend(x, y, colour, hits / 16.0);
            }
    }

    private static bool Inside(IReadOnlyList<(double X, double Y)> points, double x, double y)
    {
        bool inside = false;
        for (int i = 0, j = points.Count - 1; i < points.Count; j = i++)
        {
            var (xi, yi) = points[i];
            var (xj, yj) = points[j];
            if ((yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
        }
        return inside;
    }

    /// <summary>A marker of about <paramref name="size"/> pixels across, filled, with an outline.</summary>
    public void Marker(MarkerShape shape, double cx, double cy, double size, Rgb fill, Rgb outline)
    {
        double r = size / 2;
        if (shape == MarkerShape.Circle)
        {
            FillCircle(cx, cy, r, fill);
            StrokeCircle(cx, cy, r, outline, 1.2);
            return;
        }
        var points = MarkerOutline(shape, cx, cy, r);
        FillPolygon(points, fill);
        for (int i = 0; i < points.Count; i++)
        {
            var (ax, ay) = points[i];
            var (bx, by) = points[(i + 1) % points.Count];
            Line(ax, ay, bx, by, outline, 1.2);
        }
    }

    private static List<(double X, double Y)> MarkerOutline(MarkerShape shape, double cx, double cy, double r)
    {
        switch (shape)
        {
            case MarkerShape.Square:
                double s = r * 0.85;
                return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)];
            case MarkerShape.Triangle:
                return [(cx, cy - r * 1.1), (cx + r, cy + r * 0.75), (cx - r, cy + r * 0.75)];
            case MarkerShape.Diamond:
                return [(cx, cy - r * 1.15), (cx + r * 0.9, cy), (cx, cy + r * 1.15), (cx - r * 0.9, cy)];
            default:
                var star = new List<(double, double)>();
                for (int i = 0; i < 10; i++)
                {
                    double angle = -Math.PI / 2 + i * Math.PI / 5, radius = i % 2 == 0 ? r * 1.25 : r * 0.55;
                    star.Add((cx + radius * Math.Cos(angle), cy + radius * Math.Sin(angle)));
                }
                return star;
        }
    }

    /// <summary>Width in pixels of <paramref name="text"/> at <paramref name="scale"/>.</summary>
    public static int TextWidth(string text, int scale = 2) => BitmapFont.MeasureWidth(text) * scale;

    /// <summary>Height of capitals at <paramref name="scale"/>.</summary>
    public static int TextHeight(int scale = 2) => BitmapFont.CapHeight * scale;

    /// <summary>
    /// Draws text whose capitals span <paramref name="top"/> to top + <see cref="TextHeight"/>, aligned on
    /// <paramref name="x"/>. With <paramref name="vertical"/> it reads bottom to top, centred or aligned along y
    /// on <paramref name="x"/>, <paramref name="top"/> (then x is the left edge of the capitals).
    /// </summary>
    public void Text(string text, double x, double top, Rgb colour, int scale = 2, TextAlign align = TextAlign.Left, bool vertical = false)
    {
        int width = TextWidth(text, scale);
        double offset = align switch { TextAlign.Center => width / 2.0, TextAlign.Right => width, _ => 0 };
        int originX = (int)Math.Round(vertical ? x : x - offset), originY = (int)Math.Round(vertical ? top + offset : top);
        for (int i = 0; i < text.Length; i++)
        {
            var glyph = BitmapFont.Glyph(text[i]);
            int glyphLeft = i * BitmapFont.Advance * scale;
            for (int gy = 0; gy < BitmapFont.GlyphHeight; gy++)
                for (int gx = 0; gx < BitmapFont.GlyphWidth; gx++)
                {
                    if (!glyph[gy, gx]) continue;
                    for (int dy = 0; dy < scale; dy++)
                        for (int dx = 0; dx < scale; dx++)
                        {
                            int u = glyphLeft + gx * scale + dx, v = gy * scale + dy; // position in the unrotated line
                            if (vertical) Blend(originX + v, originY - 1 - u, colour, 1);
                            else Blend(originX + u, originY + v, colour, 1);
                        }
                }
        }
    }

    public byte[] ToPng() => PngWriter.Encode(_pixels, Width, Height, 3);

    public void Save(string path) => PngWriter.Write(path, _pixels, Width, Height, 3);
}
