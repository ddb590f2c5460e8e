using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Formats;

/// <summary>Element types a safetensors file can hold, spelled as in the file header.</summary>
public enum SafetensorsDType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL }

/// <summary>One tensor's header entry; offsets are relative to the start of the data section.</summary>
public sealed record SafetensorsEntry(string Name, SafetensorsDType DType, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
}

/// <summary>A file that is not valid safetensors; the message says what is wrong and where.</summary>
public sealed class SafetensorsFormatException(string message) : Exception(Messages.OneLine(message));

/// <summary>
/// Reads a safetensors file through a memory map, so a large file is never copied whole into managed
/// memory. The header is validated completely before any tensor is touched: header length within
/// the file and below <see cref="MaxHeaderBytes"/>, well-formed JSON, known dtypes, every tensor's
/// byte length equal to its shape times its element size, offsets inside the data and not overlapping.
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    /// <summary>The same ceiling the reference implementation uses: 100 MB of header JSON.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly long _dataStart;

    public string Path { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafetensorsFile(string path, MemoryMappedFile? map, MemoryMappedViewAccessor? view, long dataStart,
        Dictionary<string, SafetensorsEntry> entries, Dictionary<string, string> metadata)
    {
        Path = path;
        _map = map;
        _view = view;
        _dataStart = dataStart;
        Entries = entries;
        Metadata = metadata;
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"No safetensors file at '{path}'. Check the path.", path);
        long fileLength = new FileInfo(path).Length;
        if (fileLength < 8)
            throw new SafetensorsFormatException($"'{path}' is {fileLength} bytes long: too short to be safetensors (it needs an 8-byte header length). The file is truncated or not safetensors.");

        byte[] headerBytes;
        long headerLength;
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            Span<byte> lengthBytes = stackalloc byte[8];
            stream.ReadExactly(lengthBytes);
            headerLength = BitConverter.ToInt64(lengthBytes);
            if (headerLength < 2 || headerLength > MaxHeaderBytes)
                throw new SafetensorsFormatException($"'{path}' declares a header of {headerLength} bytes; a valid header is between 2 and {MaxHeaderBytes} bytes. The file is corrupt or not safetensors.");
            if (8 + headerLength > fileLength)
                throw new SafetensorsFormatException($"'{path}' declares a header of {headerLength} bytes but the file has only {fileLength - 8} bytes after the length field: the file is truncated.");
            headerBytes = new byte[headerLength];
            stream.ReadExactly(headerBytes);
        }

        long dataLength = fileLength - 8 - headerLength;
        var (entries, metadata) = ParseHeader(path, headerBytes, dataLength);
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        if (dataLength > 0)
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = map.CreateViewAccessor(0, fileLength, MemoryMappedFileAccess.Read);
        }
        return new SafetensorsFile(path, map, view, 8 + headerLength, entries, metadata);
    }

    private static (Dictionary<string, SafetensorsEntry>, Dictionary<string, string>) ParseHeader(string path, byte[] headerBytes, long dataLength)
    {
        // JsonDocument defers UTF-8 validation to GetString, which would throw InvalidOperationException later.
        if (!System.Text.Unicode.Utf8.IsValid(headerBytes))
            throw new SafetensorsFormatException($"'{path}' has a header that is not valid UTF-8. The file is corrupt or not safetensors.");
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(headerBytes.AsMemory().TrimEnd((byte)' '), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new SafetensorsFormatException($"'{path}' has a header that is not well-formed JSON ({Messages.OneLine(e.Message)}). The file is corrupt or not safetensors.");
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new SafetensorsFormatException($"'{path}' has a header that is not a JSON object.");
            var entries = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    if (property.Value.ValueKind != JsonValueKind.Object)
                        throw new SafetensorsFormatException($"'{path}': __metadata__ must be an object of strings.");
                    foreach (var item in property.Value.EnumerateObject())
                    {
                        if (item.Value.ValueKind != JsonValueKind.String)
                            throw new SafetensorsFormatException($"'{path}': __metadata__ value '{item.Name}' is not a string.");
                        metadata[item.Name] = item.Value.GetString()!;
                    }
                    continue;
                }
                entries[property.Name] = ParseEntry(path, property, dataLength);
            }

            // The tensors must cover the data exactly: no overlap, no hole, no trailing bytes (as the format requires).
            var ordered = entries.Values.OrderBy(e => e.Begin).ThenBy(e => e.End).ToList();
            long covered = 0;
            for (int i = 0; i < ordered.Count; i++)
            {
                if (i > 0 && ordered[i].Begin < ordered[i - 1].End)
                    throw new SafetensorsFormatException($"'{path}': tensors '{ordered[i - 1].Name}' [{ordered[i - 1].Begin}, {ordered[i - 1].End}) and '{ordered[i].Name}' [{ordered[i].Begin}, {ordered[i].End}) overlap. The file is corrupt.");
                if (ordered[i].Begin > covered)
                    throw new SafetensorsFormatException($"'{path}': bytes [{covered}, {ordered[i].Begin}) of the data, before tensor '{ordered[i].Name}', belong to no tensor (a hole). The file is corrupt.");
                covered = ordered[i].End;
            }
            if (covered != dataLength)
                throw new SafetensorsFormatException($"'{path}': the data holds {dataLength} bytes but the tensors cover only {covered}; the last {dataLength - covered} bytes belong to no tensor. The file is corrupt.");
            return (entries, metadata);
        }
    }

    private static SafetensorsEntry ParseEntry(string path, JsonProperty property, long dataLength)
    {
        string name = property.Name;
        var value = property.Value;
        if (value.ValueKind != JsonValueKind.Object)
            throw new SafetensorsFormatException($"'{path}': the header entry for tensor '{name}' is not an object.");
        if (!value.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' has no dtype.");
        string dtypeText = dtypeElement.GetString()!;
        if (!Enum.GetNames<SafetensorsDType>().Contains(dtypeText) || !Enum.TryParse<SafetensorsDType>(dtypeText, out var dtype))
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' has dtype '{dtypeText}', which this reader does not know (known: {string.Join(", ", Enum.GetNames<SafetensorsDType>())}).");
        if (!value.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' has no shape array.");
        var shape = new List<long>();
        foreach (var dim in shapeElement.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out long d) || d < 0)
                throw new SafetensorsFormatException($"'{path}': tensor '{name}' has a shape entry that is not a non-negative integer.");
            shape.Add(d);
        }
        if (!value.TryGetProperty("data_offsets", out var offsetsElement) || offsetsElement.ValueKind != JsonValueKind.Array || offsetsElement.GetArrayLength() != 2)
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' needs data_offsets [begin, end].");
        if (offsetsElement[0].ValueKind != JsonValueKind.Number || offsetsElement[1].ValueKind != JsonValueKind.Number
            || !offsetsElement[0].TryGetInt64(out long begin) || !offsetsElement[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' has invalid data_offsets (begin and end must be integers with 0 <= begin <= end).");
        if (end > dataLength)
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' ends at byte {end} of the data but the data holds {dataLength} bytes: the file is truncated.");
        long expected;
        try
        {
            expected = checked(shape.Aggregate(1L, (a, b) => checked(a * b)) * ElementSize(dtype));
        }
        catch (OverflowException)
        {
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' has a shape whose byte size overflows.");
        }
        if (expected != end - begin)
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' has shape [{string.Join(", ", shape)}] of {dtype} ({expected} bytes) but its data_offsets span {end - begin} bytes.");
        if (begin % ElementSize(dtype) != 0)
            throw new SafetensorsFormatException($"'{path}': tensor '{name}' ({dtype}) starts at byte {begin} of the data, which is not a multiple of its {ElementSize(dtype)}-byte element size. The file is corrupt.");
        return new SafetensorsEntry(name, dtype, shape.ToArray(), begin, end);
    }

    public static int ElementSize(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 or SafetensorsDType.I64 => 8,
        SafetensorsDType.F32 or SafetensorsDType.I32 => 4,
        SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.I16 => 2,
        _ => 1,
    };

    public static ScalarType ToScalarType(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 => ScalarType.Float64,
        SafetensorsDType.F32 => ScalarType.Float32,
        SafetensorsDType.F16 => ScalarType.Float16,
        SafetensorsDType.BF16 => ScalarType.BFloat16,
        SafetensorsDType.I64 => ScalarType.Int64,
        SafetensorsDType.I32 => ScalarType.Int32,
        SafetensorsDType.I16 => ScalarType.Int16,
        SafetensorsDType.I8 => ScalarType.Int8,
        SafetensorsDType.U8 => ScalarType.Byte,
        SafetensorsDType.BOOL => ScalarType.Bool,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    public static SafetensorsDType FromScalarType(ScalarType type) => type switch
    {
        ScalarType.Float64 => SafetensorsDType.F64,
        ScalarType.Float32 => SafetensorsDType.F32,
        ScalarType.Float16 => SafetensorsDType.F16,
        ScalarType.BFloat16 => SafetensorsDType.BF16,
        ScalarType.Int64 => SafetensorsDType.I64,
        ScalarType.Int32 => SafetensorsDType.I32,
        ScalarType.Int16 => SafetensorsDType.I16,
        ScalarType.Int8 => SafetensorsDType.I8,
        ScalarType.Byte => SafetensorsDType.U8,
        ScalarType.Bool => SafetensorsDType.BOOL,
        _ => throw new NotSupportedException($"Tensors of type {type} cannot be written to safetensors."),
    };

    public bool Contains(string name) => Entries.ContainsKey(name);

    /// <summary>Reads one tensor in its stored dtype (a new CPU tensor that owns its memory).</summary>
    public Tensor Read(string name)
    {
        if (!Entries.TryGetValue(name, out var entry))
            throw new KeyNotFoundException($"'{Path}' has no tensor named '{name}'. It has: {string.Join(", ", Entries.Keys.Order().Take(20))}{(Entries.Count > 20 ? ", ..." : "")}.");
        var tensor = torch.empty(entry.Shape, ToScalarType(entry.DType));
        if (entry.ByteLength > 0)
            tensor.bytes = Span(entry);
        return tensor;
    }

    /// <summary>Reads one tensor converted to float32.</summary>
    public Tensor ReadFloat(string name)
    {
        var tensor = Read(name);
        if (tensor.dtype == ScalarType.Float32) return tensor;
        using (tensor) return tensor.to_type(ScalarType.Float32);
    }

    /// <summary>
    /// Lets go of the mapped pages that hold <paramref name="name"/>'s bytes once they were read, so loading a model tensor
    /// by tensor keeps one copy of the weights resident (the model's), not two (see <see cref="Runtime.NativeMemory.ReleaseMappedPages"/>).
    /// </summary>
    public unsafe void Release(string name)
    {
        if (_view is null || !Entries.TryGetValue(name, out var entry) || entry.ByteLength == 0) return;
        byte* pointer = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        try
        {
            Runtime.NativeMemory.ReleaseMappedPages((nint)(pointer + _view.PointerOffset + _dataStart + entry.Begin), entry.ByteLength);
        }
        finally
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
    }

    private unsafe Span<byte> Span(SafetensorsEntry entry)
    {
        if (entry.ByteLength > int.MaxValue)
            throw new NotSupportedException($"Tensor '{entry.Name}' in '{Path}' is larger than 2 GiB, which this reader does not support yet.");
        byte* pointer = null;
        _view!.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        try
        {
            return new Span<byte>(pointer + _view.PointerOffset + _dataStart + entry.Begin, (int)entry.ByteLength);
        }
        finally
        {
            // The view stays mapped for the file's lifetime; the span is consumed before Dispose.
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
    }

    public void Dispose()
    {
        _view?.Dispose();
        _map?.Dispose();
    }
}

/// <summary>Writes tensors to a safetensors file (little-endian, 8-byte aligned data, header padded with spaces).</summary>
public static class SafetensorsWriter
{
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        // Larger elements first, then by name (as the reference writer orders them), so every tensor starts aligned to its element size.
        var items = tensors.OrderByDescending(t => t.Value.ElementSize).ThenBy(t => t.Key, StringComparer.Ordinal).ToList();
        var header = new Dictionary<string, object>(StringComparer.Ordinal);
        if (metadata is { Count: > 0 })
            header["__metadata__"] = metadata;
        long offset = 0;
        var contiguous = new List<Tensor>(items.Count);
        foreach (var (name, tensor) in items)
        {
            var cpu = tensor.detach().cpu().contiguous();
            contiguous.Add(cpu);
            long length = cpu.NumberOfElements * cpu.ElementSize;
            header[name] = new Dictionary<string, object>
            {
                ["dtype"] = SafetensorsFile.FromScalarType(cpu.dtype).ToString(),
                ["shape"] = cpu.shape,
                ["data_offsets"] = new[] { offset, offset + length },
            };
            offset += length;
        }
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(header);
        int padded = (json.Length + 7) / 8 * 8;
        var headerBytes = new byte[padded];
        json.CopyTo(headerBytes, 0);
        for (int i = json.Length; i < padded; i++) headerBytes[i] = (byte)' ';

        string? directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (directory != null) Directory.CreateDirectory(directory);
        string temporary = path + ".tmp";
        using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write))
        {
            stream.Write(BitConverter.GetBytes((long)padded));
            stream.Write(headerBytes);
            foreach (var cpu in contiguous)
            {
                if (cpu.NumberOfElements > 0) stream.Write(cpu.bytes);
            }
        }
        File.Move(temporary, path, overwrite: true);
        for (int i = 0; i < items.Count; i++)
        {
            if (!ReferenceEquals(contiguous[i], items[i].Value)) contiguous[i].Dispose();
        }
    }

    public static void Write(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
        => Write(path, (IEnumerable<KeyValuePair<string, Tensor>>)tensors, metadata);
}
