using System.IO.Compression;
using System.Security.Cryptography;
using DiffusionPrune.Data;

namespace DiffusionPrune.Tests.Data;

public sealed class MnistFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("mnist-file-tests-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static MnistImages SmallImages(int count = 12)
    {
        var labels = new byte[count];
        var pixels = new byte[count * 28 * 28];
        for (int i = 0; i < count; i++)
        {
            labels[i] = (byte)(i % 10);
            for (int p = 0; p < 784; p++)
                pixels[i * 784 + p] = (byte)((i * 31 + p * 7) % 256);
        }
        return new MnistImages(labels, pixels, 28, 28);
    }

    private string Write(string name, byte[] bytes)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static byte[] Gzip(byte[] content)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Fastest, leaveOpen: true))
            gzip.Write(content);
        return output.ToArray();
    }

    private static byte[] Gunzip(byte[] compressed)
    {
        using var gzip = new GZipStream(new MemoryStream(compressed), CompressionMode.Decompress);
        using var output = new MemoryStream();
        gzip.CopyTo(output);
        return output.ToArray();
    }

    [Fact]
    public void Encode_then_read_returns_the_same_labels_and_pixels()
    {
        var images = SmallImages();
        var read = MnistFile.Read(Write("ok.bin.gz", MnistFile.Encode(images)));
        Assert.Equal(images.Labels, read.Labels);
        Assert.Equal(images.Pixels, read.Pixels);
        Assert.Equal((28, 28), (read.Rows, read.Cols));
    }

    [Fact]
    public void Encode_is_byte_identical_across_calls_and_marks_the_gzip_os_unknown()
    {
        byte[] first = MnistFile.Encode(SmallImages());
        byte[] second = MnistFile.Encode(SmallImages());
        Assert.Equal(first, second);
        Assert.Equal(255, first[9]);
        Assert.Equal(0, BitConverter.ToInt32(first, 4)); // gzip mtime
    }

    [Fact]
    public void Encoded_content_has_the_documented_header_layout()
    {
        byte[] content = Gunzip(MnistFile.Encode(SmallImages(12)));
        Assert.Equal("MNST"u8.ToArray(), content[..4]);
        Assert.Equal(1u, BitConverter.ToUInt32(content, 4));
        Assert.Equal(12u, BitConverter.ToUInt32(content, 8));
        Assert.Equal(28u, BitConverter.ToUInt32(content, 12));
        Assert.Equal(28u, BitConverter.ToUInt32(content, 16));
        Assert.Equal(20 + 12 + 12 * 784, content.Length);
        Assert.Equal(SmallImages(12).Labels, content[20..32]);
    }

    [Fact]
    public void Truncated_gzip_file_gives_a_format_error_naming_the_file()
    {
        byte[] whole = MnistFile.Encode(SmallImages());
        string path = Write("truncated.bin.gz", whole[..(whole.Length / 2)]);
        var error = Assert.Throws<MnistFormatException>(() => MnistFile.Read(path));
        Assert.Contains("truncated.bin.gz", error.Message);
        Assert.Contains("build-mnist.sh", error.Message);
    }

    [Fact]
    public void Content_shorter_than_its_header_declares_is_reported_as_truncated()
    {
        byte[] content = Gunzip(MnistFile.Encode(SmallImages()));
        string path = Write("short.bin.gz", Gzip(content[..^100]));
        var error = Assert.Throws<MnistFormatException>(() => MnistFile.Read(path));
        Assert.Contains("truncated", error.Message);
    }

    [Fact]
    public void Content_longer_than_its_header_declares_is_rejected()
    {
        byte[] content = [.. Gunzip(MnistFile.Encode(SmallImages())), 0, 0, 0];
        var error = Assert.Throws<MnistFormatException>(() => MnistFile.Read(Write("long.bin.gz", Gzip(content))));
        Assert.Contains("unexpected data", error.Message);
    }

    [Fact]
    public void Bad_magic_is_rejected_with_the_expected_magic_in_the_message()
    {
        byte[] content = Gunzip(MnistFile.Encode(SmallImages()));
        "IDX3"u8.CopyTo(content);
        var error = Assert.Throws<MnistFormatException>(() => MnistFile.Read(Write("magic.bin.gz", Gzip(content))));
        Assert.Contains("\"MNST\"", error.Message);
    }

    [Fact]
    public void Unknown_version_is_rejected()
    {
        byte[] content = Gunzip(MnistFile.Encode(SmallImages()));
        content[4] = 2;
        var error = Assert.Throws<MnistFormatException>(() => MnistFile.Read(Write("version.bin.gz", Gzip(content))));
        Assert.Contains("version 2", error.Message);
    }

    [Fact]
    public void Label_outside_0_to_9_is_rejected()
    {
        byte[] content = Gunzip(MnistFile.Encode(SmallImages()));
        content[20 + 3] = 10;
        var error = Assert.Throws<MnistFormatException>(() => MnistFile.Read(Write("label.bin.gz", Gzip(content))));
        Assert.Contains("image 3", error.Message);
    }

    [Fact]
    public void A_file_that_is_not_gzip_is_rejected()
    {
        byte[] content = Gunzip(MnistFile.Encode(SmallImages()));
        var error = Assert.Throws<MnistFormatException>(() => MnistFile.Read(Write("raw.bin", content)));
        Assert.Contains("gzip", error.Message);
    }

    [Fact]
    public void Missing_file_says_how_to_build_it()
    {
        var error = Assert.Throws<FileNotFoundException>(() => MnistFile.Read(Path.Combine(_dir, "absent.bin.gz")));
        Assert.Contains("build-mnist.sh", error.Message);
    }

    [Fact]
    public void Committed_file_content_matches_the_hash_pinned_in_build_mnist_sh()
    {
        string path = MnistDataset.DefaultPath!;
        string script = File.ReadAllText(Path.Combine(Path.GetDirectoryName(path)!, "build-mnist.sh"));
        string contentHash = Convert.ToHexStringLower(SHA256.HashData(Gunzip(File.ReadAllBytes(path))));
        Assert.Contains($"content_sha256=\"{contentHash}\"", script);
    }

    [Fact]
    public void Reencoding_the_committed_content_is_deterministic()
    {
        var images = MnistFile.Read(MnistDataset.DefaultPath!);
        byte[] first = MnistFile.Encode(images);
        byte[] second = MnistFile.Encode(MnistFile.Read(Write("again.bin.gz", first)));
        Assert.Equal(first, second);
    }
}
