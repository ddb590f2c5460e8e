using System.Buffers.Binary;
using System.IO.Compression;

namespace DiffusionPrune.Data;

/// <summary>A file that is not a valid MNST file; the message says what is wrong and what to do.</summary>
public sealed class MnistFormatException(string message, Exception? inner = null) : Exception(Formats.Messages.OneLine(message), inner);

/// <summary>Labelled greyscale images as stored in an MNST file: one label and one rows×cols image each.</summary>
/// <param name="Labels">One label per image, 0..9.</param>
/// <param name="Pixels">Count×rows×cols bytes, image after image, row-major; 0 is background, 255 is full ink.</param>
public sealed record MnistImages(byte[] Labels, byte[] Pixels, int Rows, int Cols)
{
    public int Count => Labels.Length;
    public int PixelsPerImage => Rows * Cols;
}

/// <summary>
/// The compact MNST format our MNIST copy is stored in (<c>samples/data/mnist.bin.gz</c>).
/// A gzip stream whose content is, all integers little-endian:
/// <code>
/// offset  size               field
///      0  4                  magic, ASCII "MNST"
///      4  4  uint32          version, 1
///      8  4  uint32          count N (number of images)
///     12  4  uint32          rows (28)
///     16  4  uint32          cols (28)
///     20  N  uint8           labels, 0..9, one per image
///   20+N  N*rows*cols uint8  pixels, image after image, row-major; 0 = background, 255 = full ink
/// </code>
/// Nothing follows the pixels. Encoding is deterministic: the same images give the same bytes on
/// every run (gzip header with no file name, mtime 0 and OS byte 255 "unknown"; deflate at
/// <see cref="CompressionLevel.SmallestSize"/>). The deflate bytes come from the zlib bundled with
/// the .NET runtime, so a different runtime version may compress differently; the decompressed
/// content never changes.
/// </summary>
public static class MnistFile
{
    public const uint Version = 1;
    public const int HeaderBytes = 20;
    public static ReadOnlySpan<byte> Magic => "MNST"u8;

    /// <summary>Upper bound on the decompressed size we accept, so a corrupt count cannot make us allocate gigabytes.</summary>
    public const long MaxContentBytes = 1L << 30;

    /// <summary>Encodes images as a gzip-compressed MNST file, byte-identical for identical input.</summary>
    public static byte[] Encode(MnistImages images)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.Rows <= 0 || images.Cols <= 0)
            throw new ArgumentException($"Image size must be positive, got {images.Rows}x{images.Cols}.", nameof(images));
        if (images.Pixels.LongLength != (long)images.Count * images.PixelsPerImage)
            throw new ArgumentException($"{images.Count} images of {images.Rows}x{images.Cols} need {(long)images.Count * images.PixelsPerImage} pixel bytes, got {images.Pixels.LongLength}.", nameof(images));
        for (int i = 0; i < images.Count; i++)
            if (images.Labels[i] > 9)
                throw new ArgumentException($"Label {images.Labels[i]} of image {i} is not a digit 0..9.", nameof(images));

        var header = new byte[HeaderBytes];
        Magic.CopyTo(header);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(4), Version);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(8), (uint)images.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(12), (uint)images.Rows);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(16), (uint)images.Cols);

        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.SmallestSize, leaveOpen: true))
        {
            gzip.Write(header);
            gzip.Write(images.Labels);
            gzip.Write(images.Pixels);
        }
        byte[] bytes = output.ToArray();
        // zlib writes the building platform's OS code (3 on Unix, 10 on Windows) into byte 9 of the
        // gzip header; "unknown" keeps the file the same wherever it is rebuilt. The header is not
        // covered by the gzip CRC, so this changes nothing else.
        bytes[9] = 255;
        return bytes;
    }

    /// <summary>Reads and validates a gzip-compressed MNST file.</summary>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="MnistFormatException">The file is not gzip, is truncated, or its content is not valid MNST.</exception>
    public static MnistImages Read(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"No MNIST data file at '{path}'. Rebuild it with samples/data/build-mnist.sh, or pass the path of an existing mnist.bin.gz.", path);
        using var stream = File.OpenRead(path);
        return Decode(stream, path);
    }

    /// <summary>Decodes a gzip-compressed MNST stream; <paramref name="source"/> names it in error messages.</summary>
    public static MnistImages Decode(Stream compressed, string source = "stream")
    {
        byte[] content;
        try
        {
            using var gzip = new GZipStream(compressed, CompressionMode.Decompress, leaveOpen: true);
            using var buffer = new MemoryStream();
            var chunk = new byte[81920];
            int read;
            while ((read = gzip.Read(chunk, 0, chunk.Length)) > 0)
            {
                buffer.Write(chunk, 0, read);
                if (buffer.Length > MaxContentBytes)
                    throw new MnistFormatException($"'{source}' decompresses to more than {MaxContentBytes} bytes: not an MNIST data file. Rebuild it with samples/data/build-mnist.sh.");
            }
            content = buffer.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw new MnistFormatException($"'{source}' is not a readable gzip stream ({e.Message}); the file is corrupt or truncated. Rebuild it with samples/data/build-mnist.sh.", e);
        }
        return Parse(content, source);
    }

    /// <summary>Validates decompressed MNST content and splits it into labels and pixels.</summary>
    public static MnistImages Parse(ReadOnlySpan<byte> content, string source = "content")
    {
        const string Fix = "Rebuild it with samples/data/build-mnist.sh.";
        if (content.Length < HeaderBytes)
            throw new MnistFormatException($"'{source}' holds {content.Length} bytes after decompression, fewer than the {HeaderBytes}-byte MNST header: the file is truncated or not MNIST data. {Fix}");
        if (!content[..4].SequenceEqual(Magic))
            throw new MnistFormatException($"'{source}' does not start with the magic \"MNST\" (found bytes {Convert.ToHexString(content[..4])}): not an MNIST data file. {Fix}");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(content[4..]);
        if (version != Version)
            throw new MnistFormatException($"'{source}' is MNST version {version}; this build reads version {Version} only. {Fix}");
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(content[8..]);
        uint rows = BinaryPrimitives.ReadUInt32LittleEndian(content[12..]);
        uint cols = BinaryPrimitives.ReadUInt32LittleEndian(content[16..]);
        if (rows == 0 || cols == 0 || rows > 4096 || cols > 4096)
            throw new MnistFormatException($"'{source}' declares images of {rows}x{cols} pixels, which is not a plausible size: the header is corrupt. {Fix}");
        long expected = HeaderBytes + (long)count + (long)count * rows * cols;
        if (content.Length != expected)
        {
            string what = content.Length < expected ? "truncated" : "followed by unexpected data";
            throw new MnistFormatException($"'{source}' declares {count} images of {rows}x{cols}, which take {expected} bytes, but holds {content.Length}: the file is {what}. {Fix}");
        }
        byte[] labels = content.Slice(HeaderBytes, (int)count).ToArray();
        for (int i = 0; i < labels.Length; i++)
            if (labels[i] > 9)
                throw new MnistFormatException($"'{source}' gives image {i} the label {labels[i]}, not a digit 0..9: the file is corrupt. {Fix}");
        byte[] pixels = content[(HeaderBytes + (int)count)..].ToArray();
        return new MnistImages(labels, pixels, (int)rows, (int)cols);
    }
}
