using System.Buffers.Binary;
using System.Text;
using DiffusionPrune.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Formats;

/// <summary>
/// The safetensors reader and writer: lossless round trips, and every kind of corrupt file is a
/// <see cref="SafetensorsFormatException"/> that names the problem (never a crash, hang or huge allocation).
/// </summary>
public class SafetensorsTests
{
    // ---- round trips ----

    [Fact]
    public void Released_pages_leave_the_resident_set_and_read_back_the_same()
    {
        // 64 MiB: well above the noise of other threads' file-backed pages (libraries, the test host).
        using var temp = Fixtures.Temp();
        const long elements = 16L * 1024 * 1024;
        using (var big = arange(elements, ScalarType.Float32))
            SafetensorsWriter.Write(temp.File("big.safetensors"), new Dictionary<string, Tensor> { ["big"] = big });
        using var file = SafetensorsFile.Open(temp.File("big.safetensors"));
        long before = DiffusionPrune.Runtime.NativeMemory.ResidentFileBytes() ?? 0;
        using (var first = file.Read("big"))
        {
            long afterRead = DiffusionPrune.Runtime.NativeMemory.ResidentFileBytes() ?? 0;
            file.Release("big");
            long afterRelease = DiffusionPrune.Runtime.NativeMemory.ResidentFileBytes() ?? 0;
            if (OperatingSystem.IsLinux())
            {
                Assert.True(afterRead - before > 48L << 20, $"reading 64 MiB through the mapping should make its pages resident ({before >> 20} -> {afterRead >> 20} MiB)");
                Assert.True(afterRead - afterRelease > 48L << 20, $"releasing should drop them ({afterRead >> 20} -> {afterRelease >> 20} MiB)");
            }
            using var again = file.Read("big"); // faulted back in from the page cache
            Assert.True(again.equal(first).all().item<bool>());
            Assert.Equal(elements - 1, again[elements - 1].item<float>());
        }
    }

    [Fact]
    public void Round_trip_keeps_values_dtypes_shapes_and_metadata()
    {
        using var temp = Fixtures.Temp();
        using var scope = NewDisposeScope();
        var generator = new Generator(42);
        var tensors = new Dictionary<string, Tensor>
        {
            ["f32"] = randn([3, 4, 5], generator: generator),
            ["f16"] = randn([7, 2], generator: generator).to_type(ScalarType.Float16),
            ["bf16"] = randn([2, 3, 2], generator: generator).to_type(ScalarType.BFloat16),
            ["i64"] = tensor(new long[] { long.MinValue, -1, 0, 1, long.MaxValue, 123456789012345 }),
            ["empty"] = zeros([0, 3], ScalarType.Float32),
            ["scalar"] = tensor(2.5f),
        };
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode \"quoted\"" };
        string path = temp.File("round.safetensors");
        SafetensorsWriter.Write(path, tensors, metadata);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(tensors.Keys.Order(), file.Entries.Keys.Order());
        Assert.Equal(metadata, file.Metadata);
        Assert.Equal(SafetensorsDType.F32, file.Entries["f32"].DType);
        Assert.Equal(SafetensorsDType.F16, file.Entries["f16"].DType);
        Assert.Equal(SafetensorsDType.BF16, file.Entries["bf16"].DType);
        Assert.Equal(SafetensorsDType.I64, file.Entries["i64"].DType);
        foreach (var (name, expected) in tensors)
        {
            var actual = file.Read(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.True(Same(expected, actual), $"tensor '{name}' changed in the round trip");
        }
        Assert.Equal(new long[] { long.MinValue, -1, 0, 1, long.MaxValue, 123456789012345 }, file.Read("i64").data<long>().ToArray());
        // ReadFloat upcasts F16/BF16 exactly.
        Assert.True(Same(tensors["f16"].to_type(ScalarType.Float32), file.ReadFloat("f16")));
        Assert.True(Same(tensors["bf16"].to_type(ScalarType.Float32), file.ReadFloat("bf16")));
    }

    [Fact]
    public void Writer_output_is_byte_exact_safetensors_with_aligned_data()
    {
        using var temp = Fixtures.Temp();
        using var scope = NewDisposeScope();
        string path = temp.File("exact.safetensors");
        SafetensorsWriter.Write(path, new Dictionary<string, Tensor> { ["a"] = tensor(new[] { 1.0f, -2.0f }) });
        byte[] bytes = File.ReadAllBytes(path);
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        Assert.Equal(0, headerLength % 8);
        Assert.Equal(8 + headerLength + 8, bytes.Length);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)headerLength);
        Assert.StartsWith("{", header);
        Assert.Contains("\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", header);
        Assert.Equal(1.0f, BitConverter.ToSingle(bytes, (int)(8 + headerLength)));
        Assert.Equal(-2.0f, BitConverter.ToSingle(bytes, (int)(8 + headerLength + 4)));
    }

    [Fact]
    public void A_file_with_only_empty_tensors_has_no_data_section_and_reads()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "empty.safetensors", "{\"e\":{\"dtype\":\"F32\",\"shape\":[2,0],\"data_offsets\":[0,0]}}", []);
        using var file = SafetensorsFile.Open(path);
        using var t = file.Read("e");
        Assert.Equal(new long[] { 2, 0 }, t.shape);
    }

    // ---- corrupt files ----

    [Fact]
    public void File_shorter_than_the_length_field_is_rejected()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("short.safetensors");
        File.WriteAllBytes(path, [1, 2, 3, 4, 5]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("5 bytes", e.Message);
        Assert.Contains("too short", e.Message);
    }

    [Fact]
    public void Data_cut_short_is_rejected_as_truncated()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("cut.safetensors");
        using (var scope = NewDisposeScope())
            SafetensorsWriter.Write(path, new Dictionary<string, Tensor> { ["w"] = ones(10) });
        byte[] bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^4]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'w'", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void Header_length_beyond_the_file_is_rejected_as_truncated()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "long.safetensors", "{}", [], declaredHeaderLength: 1000);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("1000 bytes", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Theory]
    [InlineData(1L << 62)]
    [InlineData(long.MaxValue)]
    [InlineData(-8L)]
    [InlineData(0L)]
    public void Absurd_header_length_is_rejected_without_allocating_it(long declared)
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "absurd.safetensors", "{}", new byte[64], declaredHeaderLength: declared);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Contains(declared.ToString(), e.Message);
        Assert.Contains("header", e.Message);
        Assert.True(allocated < 1_000_000, $"rejecting the file allocated {allocated} bytes");
    }

    [Theory]
    [InlineData("{\"a\": {\"dtype\": \"F32\",")]
    [InlineData("not json at all")]
    [InlineData("{\"a\": 1} trailing")]
    public void Header_that_is_not_json_is_rejected(string header)
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "notjson.safetensors", header, new byte[8]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("not well-formed JSON", e.Message);
    }

    [Fact]
    public void Header_that_is_not_valid_utf8_is_rejected()
    {
        using var temp = Fixtures.Temp();
        byte[] header = [.. "{\""u8, 0xFF, 0xFE, .. "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"u8];
        string path = WriteRaw(temp, "utf8.safetensors", header, new byte[4]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("header", e.Message);
    }

    [Theory]
    [InlineData("[1, 2, 3]")]
    [InlineData("\"a string\"")]
    [InlineData("42")]
    [InlineData("null")]
    public void Header_json_that_is_not_an_object_is_rejected(string header)
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "array.safetensors", header, []);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("not a JSON object", e.Message);
    }

    [Fact]
    public void Overlapping_offsets_are_rejected_naming_both_tensors()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "overlap.safetensors",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            new byte[12]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("overlap", e.Message);
        Assert.Contains("'a'", e.Message);
        Assert.Contains("'b'", e.Message);
    }

    [Fact]
    public void A_hole_before_the_first_tensor_or_between_tensors_is_rejected()
    {
        using var temp = Fixtures.Temp();
        string first = WriteRaw(temp, "hole0.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[64,72]}}", new byte[72]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(first));
        Assert.Contains("bytes [0, 64)", e.Message);
        Assert.Contains("hole", e.Message);
        string between = WriteRaw(temp, "hole1.safetensors",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", new byte[20]);
        e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(between));
        Assert.Contains("before tensor 'b'", e.Message);
    }

    [Fact]
    public void Trailing_bytes_after_the_last_tensor_are_rejected()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "trailing.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", new byte[16]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("the last 8 bytes belong to no tensor", e.Message);
    }

    [Fact]
    public void A_tensor_not_aligned_to_its_element_size_is_rejected()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "misaligned.safetensors",
            "{\"h\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", new byte[6]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'f'", e.Message);
        Assert.Contains("not a multiple of its 4-byte element size", e.Message);
    }

    [Fact]
    public void The_writer_orders_mixed_dtypes_so_every_tensor_is_aligned()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("mixed.safetensors");
        using (var half = TorchSharp.torch.ones(3, TorchSharp.torch.ScalarType.Float16))
        using (var single = TorchSharp.torch.ones(2))
        using (var wide = TorchSharp.torch.ones(1, TorchSharp.torch.ScalarType.Int64))
            SafetensorsWriter.Write(path, new Dictionary<string, TorchSharp.torch.Tensor> { ["a_half"] = half, ["b_single"] = single, ["c_long"] = wide });
        using var file = SafetensorsFile.Open(path); // would throw if a tensor were misaligned or the data had a hole
        Assert.Equal(0, file.Entries["c_long"].Begin);
        Assert.Equal(8, file.Entries["b_single"].Begin);
        Assert.Equal(16, file.Entries["a_half"].Begin);
    }

    [Fact]
    public void Offsets_past_the_end_of_the_data_are_rejected()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "past.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", new byte[16]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'a'", e.Message);
        Assert.Contains("ends at byte 24", e.Message);
        Assert.Contains("16 bytes", e.Message);
    }

    [Theory]
    [InlineData("[\"0\", \"4\"]")]
    [InlineData("[0, null]")]
    [InlineData("[0, 4.5]")]
    [InlineData("[-4, 0]")]
    [InlineData("[4, 0]")]
    [InlineData("[0]")]
    [InlineData("{\"begin\": 0}")]
    public void Malformed_data_offsets_are_rejected(string offsets)
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "offsets.safetensors", $"{{\"a\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{offsets}}}}}", new byte[8]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'a'", e.Message);
        Assert.Contains("data_offsets", e.Message);
    }

    [Fact]
    public void Unknown_dtype_is_rejected_naming_it()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "dtype.safetensors", "{\"a\":{\"dtype\":\"F8_E9\",\"shape\":[4],\"data_offsets\":[0,4]}}", new byte[8]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'F8_E9'", e.Message);
        Assert.Contains("'a'", e.Message);
    }

    [Theory]
    [InlineData("\"1\"")] // a number spelled as an enum index must not parse
    [InlineData("\"f32\"")]
    [InlineData("32")]
    public void Dtype_must_be_an_exact_known_name(string dtype)
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "dtype2.safetensors", $"{{\"a\":{{\"dtype\":{dtype},\"shape\":[1],\"data_offsets\":[0,4]}}}}", new byte[8]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("dtype", e.Message);
    }

    [Fact]
    public void Shape_times_dtype_size_different_from_the_byte_length_is_rejected()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "size.safetensors", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", new byte[16]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("[2, 3]", e.Message);
        Assert.Contains("12 bytes", e.Message);
        Assert.Contains("16 bytes", e.Message);
    }

    [Fact]
    public void Shape_whose_size_overflows_is_rejected()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "overflow.safetensors",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", []);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("overflows", e.Message);
    }

    [Theory]
    [InlineData("[2, -1]")]
    [InlineData("[2, 1.5]")]
    [InlineData("[\"2\"]")]
    public void Negative_or_non_integer_shape_entry_is_rejected(string shape)
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "neg.safetensors", $"{{\"a\":{{\"dtype\":\"F32\",\"shape\":{shape},\"data_offsets\":[0,0]}}}}", []);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("'a'", e.Message);
        Assert.Contains("non-negative integer", e.Message);
    }

    [Fact]
    public void Metadata_that_is_not_strings_is_rejected()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "meta.safetensors", "{\"__metadata__\":{\"format\":1}}", []);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains("__metadata__", e.Message);
    }

    [Fact]
    public void Reading_an_absent_tensor_names_it()
    {
        using var temp = Fixtures.Temp();
        string path = WriteRaw(temp, "one.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", new byte[4]);
        using var file = SafetensorsFile.Open(path);
        var e = Assert.Throws<KeyNotFoundException>(() => file.Read("b"));
        Assert.Contains("'b'", e.Message);
    }

    // ---- memory ----

    [Fact]
    public void Open_maps_the_file_instead_of_copying_it_into_managed_memory()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("big.safetensors");
        using (var scope = NewDisposeScope())
        {
            var generator = new Generator(7);
            SafetensorsWriter.Write(path, new Dictionary<string, Tensor>
            {
                ["big"] = randn([12_500_000], generator: generator), // 50 MB
                ["small"] = arange(10, dtype: ScalarType.Float32),
            });
        }
        Assert.True(new FileInfo(path).Length > 50_000_000);

        GC.Collect();
        long before = GC.GetAllocatedBytesForCurrentThread();
        using var file = SafetensorsFile.Open(path);
        long afterOpen = GC.GetAllocatedBytesForCurrentThread();
        using var big = file.Read("big");
        long afterRead = GC.GetAllocatedBytesForCurrentThread();

        Assert.True(afterOpen - before < 1_000_000, $"Open allocated {afterOpen - before} managed bytes for a 50 MB file");
        Assert.True(afterRead - afterOpen < 1_000_000, $"Read allocated {afterRead - afterOpen} managed bytes for a 50 MB tensor (it belongs in native memory)");
        using var small = file.Read("small");
        Assert.Equal(Enumerable.Range(0, 10).Select(i => (float)i).ToArray(), small.data<float>().ToArray());
        Assert.Equal(12_500_000, big.numel());
    }

    // ---- helpers ----

    /// <summary>Same dtype, shape and every element bit-for-bit equal in value.</summary>
    private static bool Same(Tensor a, Tensor b)
        => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && (a.numel() == 0 || a.eq(b).all().item<bool>());

    private static string WriteRaw(TempFolder temp, string name, string header, byte[] data, long? declaredHeaderLength = null)
        => WriteRaw(temp, name, Encoding.UTF8.GetBytes(header), data, declaredHeaderLength);

    /// <summary>Writes 8-byte little-endian length + header bytes + data, exactly as given.</summary>
    private static string WriteRaw(TempFolder temp, string name, byte[] header, byte[] data, long? declaredHeaderLength = null)
    {
        string path = temp.File(name);
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, declaredHeaderLength ?? header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
