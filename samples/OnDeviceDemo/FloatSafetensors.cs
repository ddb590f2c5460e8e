using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace OnDeviceDemo;

/// <summary>
/// The few safetensors the demo needs, without TorchSharp: reading one float32 tensor (the initial latents of --noise) and
/// writing float32 / int64 tensors (an --output ending in .safetensors). The core's reader is
/// src/DiffusionPrune/Formats/Safetensors.cs (TorchSharp tensors, every dtype); this one refuses anything but F32 on reading.
/// Format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}} (plus an
/// optional "__metadata__"), then the tensors' bytes, little-endian, offsets relative to the end of the header.
/// </summary>
public static class FloatSafetensors
{
    /// <summary>The reference implementation's ceiling on header JSON.</summary>
    private const long MaxHeaderBytes = 100_000_000;

    /// <summary>
    /// Reads the float32 tensor <paramref name="key"/>, or, when <paramref name="key"/> is null, the tensor named "noise" or else
    /// the file's only tensor.
    /// </summary>
    public static (float[] Values, int[] Shape) ReadFloat(string path, string? key = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"No safetensors file at '{path}'. Check the path.", path);
        using var stream = File.OpenRead(path);
        long fileLength = stream.Length;
        Span<byte> lengthBytes = stackalloc byte[8];
        if (fileLength < 8 || stream.Read(lengthBytes) != 8)
            throw new InvalidDataException($"'{path}' is {fileLength} bytes long: too short to be safetensors.");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)Math.Min(MaxHeaderBytes, fileLength - 8))
            throw new InvalidDataException($"'{path}' declares a {headerLength}-byte header in a {fileLength}-byte file; it is truncated or not safetensors.");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);
        JsonObject header;
        try
        {
            header = JsonNode.Parse(headerBytes) as JsonObject ?? throw new InvalidDataException($"'{path}': the safetensors header is not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{path}': the safetensors header is not valid JSON ({e.Message.Split('\n')[0]}).", e);
        }
        var names = header.Select(p => p.Key).Where(k => k != "__metadata__").ToArray();
        string name = key ?? (names.Contains("noise") ? "noise" : names.Length == 1 ? names[0]
            : throw new ArgumentException($"'{path}' holds {names.Length} tensors ({string.Join(", ", names)}) and none is named 'noise'; give a file with one tensor or a 'noise' tensor."));
        if (header[name] is not JsonObject entry)
            throw new ArgumentException($"'{path}' has no tensor '{name}' (it has: {string.Join(", ", names)}).");
        try
        {
            string dtype = entry["dtype"]!.GetValue<string>();
            if (dtype != "F32")
                throw new InvalidDataException($"'{path}': tensor '{name}' is {dtype}; the demo reads float32 (F32) noise only. Save it as float32.");
            var shape = entry["shape"]!.AsArray().Select(d => checked((int)d!.GetValue<long>())).ToArray();
            var offsets = entry["data_offsets"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
            long count = shape.Aggregate(1L, (a, d) => d < 0 ? throw new InvalidDataException($"'{path}': tensor '{name}' has a negative dimension.") : checked(a * d));
            long dataLength = fileLength - 8 - (long)headerLength;
            if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || offsets[1] > dataLength || offsets[1] - offsets[0] != 4 * count)
                throw new InvalidDataException($"'{path}': tensor '{name}' of shape [{string.Join(", ", shape)}] has data_offsets [{string.Join(", ", offsets)}], " +
                    $"which do not hold {4 * count} bytes inside the file's {dataLength} data bytes. The file is corrupt.");
            var bytes = new byte[4 * count];
            stream.Position = 8 + (long)headerLength + offsets[0];
            stream.ReadExactly(bytes);
            var values = new float[count];
            for (long i = 0; i < count; i++) values[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan((int)(4 * i), 4));
            return (values, shape);
        }
        catch (Exception e) when (e is InvalidOperationException or NullReferenceException or FormatException or OverflowException)
        {
            throw new InvalidDataException($"'{path}': the header entry of '{name}' is malformed ({entry.ToJsonString()}).", e);
        }
    }

    /// <summary>One tensor to write: float32 or int64 values and their shape.</summary>
    public sealed record Tensor(string Name, Array Values, int[] Shape);

    /// <summary>Writes float32 (<c>float[]</c>) and int64 (<c>long[]</c>) tensors, in the order given.</summary>
    public static void Write(string path, IReadOnlyList<Tensor> tensors)
    {
        var header = new JsonObject();
        long offset = 0;
        var data = new List<byte[]>();
        foreach (var t in tensors)
        {
            byte[] bytes;
            string dtype;
            switch (t.Values)
            {
                case float[] f:
                    dtype = "F32";
                    bytes = new byte[4 * f.Length];
                    for (int i = 0; i < f.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i), f[i]);
                    break;
                case long[] l:
                    dtype = "I64";
                    bytes = new byte[8 * l.Length];
                    for (int i = 0; i < l.Length; i++) BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(8 * i), l[i]);
                    break;
                default:
                    throw new ArgumentException($"Tensor '{t.Name}': only float[] and long[] are written.");
            }
            if (t.Shape.Aggregate(1L, (a, d) => a * d) != t.Values.Length)
                throw new ArgumentException($"Tensor '{t.Name}': {t.Values.Length} values do not make [{string.Join(", ", t.Shape)}].");
            header[t.Name] = new JsonObject
            {
                ["dtype"] = dtype,
                ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes.Length),
            };
            offset += bytes.Length;
            data.Add(bytes);
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        // pad the header with spaces to 8 bytes, as the reference writer does, so the data is aligned
        int padded = (json.Length + 7) / 8 * 8;
        if (Path.GetDirectoryName(Path.GetFullPath(path)) is { } folder) Directory.CreateDirectory(folder);
        using var stream = File.Create(path);
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        stream.Write(length);
        stream.Write(json);
        for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
        foreach (var bytes in data) stream.Write(bytes);
    }
}
