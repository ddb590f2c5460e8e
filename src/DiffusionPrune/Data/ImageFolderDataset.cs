using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using static TorchSharp.torch;

namespace DiffusionPrune.Data;

/// <summary>
/// A folder of PNG or JPEG images, read with ImageSharp, resized to the model's size (bicubic, aspect ratio
/// ignored, as diffusers' training scripts do with <c>Resize</c> + center crop when the aspect already matches) and
/// converted to its channels (grey as ITU-R BT.601 luma, or RGB), scaled to [-1, 1]. Layout, as torchvision's
/// ImageFolder:
/// <list type="bullet">
/// <item>images directly in the folder: unlabelled;</item>
/// <item>images in subfolders: labelled, class i being the i-th subfolder in ordinal order of names (so 0/ ... 9/
/// give the digits). Images directly in the folder are then not allowed, to keep labels unambiguous.</item>
/// </list>
/// Images are decoded once, when loaded, so a broken file fails at once with its name, not mid-training.
/// </summary>
public sealed class ImageFolderDataset : IImageDataset
{
    private static readonly string[] Extensions = [".png", ".jpg", ".jpeg"];

    /// <summary>Refuses images whose header claims more pixels than this (a decompression bomb), before decoding.</summary>
    public const long MaxPixels = 64L * 1024 * 1024;

    private readonly float[] _pixels;
    private readonly long[]? _labels;

    private ImageFolderDataset(string name, int channels, int height, int width, float[] pixels, long[]? labels, IReadOnlyList<string> classes, IReadOnlyList<string> files)
    {
        Name = name;
        Channels = channels;
        Height = height;
        Width = width;
        _pixels = pixels;
        _labels = labels;
        Classes = classes;
        Files = files;
    }

    public string Name { get; }
    public int Count => Files.Count;
    public int Channels { get; }
    public int Height { get; }
    public int Width { get; }
    public int? NumClasses => _labels is null ? null : Classes.Count;

    /// <summary>The subfolder names, in label order (empty when unlabelled).</summary>
    public IReadOnlyList<string> Classes { get; }

    /// <summary>Every image's path relative to the folder, in dataset order (by class, then ordinal name).</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>Reads every image under <paramref name="folder"/> at <paramref name="channels"/> (1 or 3) x <paramref name="height"/> x <paramref name="width"/>.</summary>
    public static ImageFolderDataset Load(string folder, int channels, int height, int width)
    {
        if (channels is not (1 or 3))
            throw new ArgumentException($"An image folder can feed models with 1 (grey) or 3 (RGB) channels, not {channels}.");
        if (height < 1 || width < 1) throw new ArgumentException($"Image size must be positive, not {height} x {width}.");
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"No image folder at '{folder}'.");

        var top = ImagesIn(folder);
        var subfolders = Directory.GetDirectories(folder).OrderBy(d => Path.GetFileName(d), StringComparer.Ordinal)
            .Where(d => ImagesIn(d).Count > 0).ToList();
        if (top.Count > 0 && subfolders.Count > 0)
            throw new ArgumentException($"'{folder}' has images both directly in it and in class subfolders ({string.Join(", ", subfolders.Select(Path.GetFileName))}); " +
                "put every image in a class subfolder, or none.");
        var entries = subfolders.Count == 0
            ? top.Select(f => (File: f, Label: -1L)).ToList()
            : subfolders.SelectMany((d, label) => ImagesIn(d).Select(f => (File: f, Label: (long)label))).ToList();
        if (entries.Count == 0)
            throw new ArgumentException($"'{folder}' holds no PNG or JPEG images (nor class subfolders with some).");

        int size = channels * height * width;
        var pixels = new float[checked(entries.Count * size)];
        for (int i = 0; i < entries.Count; i++)
            Decode(entries[i].File, channels, height, width, pixels.AsSpan(i * size, size));

        string mode = channels == 1 ? "grey" : "RGB";
        string labelled = subfolders.Count == 0 ? "" : $", {subfolders.Count} classes";
        return new ImageFolderDataset($"images in {folder} ({entries.Count} images, {mode}, {height}x{width}{labelled})", channels, height, width, pixels,
            subfolders.Count == 0 ? null : entries.Select(e => e.Label).ToArray(),
            subfolders.Select(d => Path.GetFileName(d)!).ToList(),
            entries.Select(e => Path.GetRelativePath(folder, e.File)).ToList());
    }

    public Tensor Images(ReadOnlySpan<int> indices)
    {
        int size = Channels * Height * Width;
        var data = new float[indices.Length * size];
        for (int n = 0; n < indices.Length; n++)
            _pixels.AsSpan(Checked(indices[n]) * size, size).CopyTo(data.AsSpan(n * size, size));
        return tensor(data, [indices.Length, Channels, Height, Width]);
    }

    public Tensor Labels(ReadOnlySpan<int> indices)
    {
        if (_labels is null) throw new InvalidOperationException($"The {Name} has no labels (no class subfolders).");
        var data = new long[indices.Length];
        for (int n = 0; n < indices.Length; n++) data[n] = _labels[Checked(indices[n])];
        return tensor(data, [indices.Length]);
    }

    private int Checked(int index) => (uint)index < (uint)Count
        ? index
        : throw new ArgumentOutOfRangeException(nameof(index), index, $"The {Name} has {Count} images (indices 0..{Count - 1}).");

    private static List<string> ImagesIn(string folder) => Directory.GetFiles(folder)
        .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
        .OrderBy(f => Path.GetFileName(f), StringComparer.Ordinal).ToList();

    /// <summary>Decodes one file into <paramref name="target"/> (CHW, [-1, 1]); a one-line error naming the file otherwise.</summary>
    private static void Decode(string file, int channels, int height, int width, Span<float> target)
    {
        try
        {
            var info = Image.Identify(file) ?? throw new InvalidDataException("not a PNG or JPEG image");
            if ((long)info.Width * info.Height > MaxPixels)
                throw new InvalidDataException($"{info.Width} x {info.Height} pixels is more than the {MaxPixels:N0} allowed");
            using var image = Image.Load<Rgb24>(file);
            if (image.Width != width || image.Height != height)
                image.Mutate(x => x.Resize(width, height, KnownResamplers.Bicubic));
            int plane = height * width;
            var pixels = new Rgb24[plane];
            image.CopyPixelDataTo(pixels);
            for (int at = 0; at < plane; at++)
            {
                var p = pixels[at];
                if (channels == 1)
                {
                    target[at] = Unit(0.299 * p.R + 0.587 * p.G + 0.114 * p.B);
                }
                else
                {
                    target[at] = Unit(p.R);
                    target[plane + at] = Unit(p.G);
                    target[2 * plane + at] = Unit(p.B);
                }
            }
        }
        catch (Exception e) when (e is UnknownImageFormatException or InvalidImageContentException or InvalidDataException or NotSupportedException or IOException)
        {
            throw new InvalidDataException($"Cannot read image '{file}': {FirstLine(e.Message)}.", e);
        }
    }

    private static float Unit(double value) => (float)(value / 255.0 * 2.0 - 1.0);

    private static string FirstLine(string message) => message.Split('\n')[0].TrimEnd('.', ' ');
}
