using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using CsCheck;
using DiffusionPrune.Batch;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.Schedulers;

namespace DiffusionPrune.Tests.Formats;

/// <summary>
/// The in-suite fuzz harness (issue 16): seeded mutations of valid files, each of which must load or be refused with
/// one of our user-error types (<see cref="UserErrors"/>), never any other exception, within 2 s. CsCheck draws the
/// cases from a fixed seed, so a failure names a case that reproduces. 2,000 cases per input kind, 10,000 per run;
/// <c>DPRUNE_FUZZ_CASES=200000</c> (one kind x 5 = 1,000,000) is the long mode.
/// </summary>
public class FuzzTests
{
    private static readonly int Cases = int.TryParse(Environment.GetEnvironmentVariable("DPRUNE_FUZZ_CASES"), out int n) && n > 0 ? n : 2000;
    private static readonly TimeSpan PerCase = TimeSpan.FromSeconds(2);

    /// <summary>Runs <paramref name="load"/> on <paramref name="cases"/> mutants; anything but success or a user error fails with the case.</summary>
    private static void Fuzz(string kind, Func<Random, string> mutate, Action<string> load, string seed)
    {
        Gen.Int.Sample(caseSeed =>
        {
            string input = mutate(new Random(caseSeed));
            var watch = Stopwatch.StartNew();
            try
            {
                load(input);
            }
            catch (Exception e) when (UserErrors.Is(e))
            {
                if (e.Message.TrimEnd().Contains('\n')) // one line for the user
                    throw new Xunit.Sdk.XunitException($"{kind} case {caseSeed}: a {e.GetType().Name} of several lines: {e.Message}\ninput: {Shorten(input)}");
            }
            catch (Exception e)
            {
                throw new Xunit.Sdk.XunitException($"{kind} case {caseSeed}: {e.GetType().Name}: {e.Message}\ninput: {Shorten(input)}");
            }
            Assert.True(watch.Elapsed < PerCase, $"{kind} case {caseSeed} took {watch.Elapsed.TotalSeconds:F1} s");
        }, iter: Cases, seed: seed, threads: 1);
    }

    private static string Shorten(string text) => text.Length <= 400 ? text : text[..400] + "...";

    // ---- JSON mutations: remove keys, swap types and values, huge and negative numbers, deep nesting, raw text edits ----

    private static readonly Func<Random, JsonNode?>[] Replacements =
    [
        _ => null, _ => JsonValue.Create(1e308), _ => JsonValue.Create(-1e308), _ => JsonValue.Create(-1), _ => JsonValue.Create(0),
        _ => JsonValue.Create(2147483648L), _ => JsonValue.Create(long.MaxValue), _ => JsonValue.Create(0.5), _ => JsonValue.Create(1e-320),
        _ => JsonValue.Create("x"), _ => JsonValue.Create(""), _ => JsonValue.Create(true), _ => new JsonArray(), _ => new JsonObject(),
        r => JsonValue.Create(new string('a', r.Next(1, 100_000))), r => Nested(r.Next(10, 300)), r => JsonValue.Create(r.Next(-5, 5000)),
        r => new JsonArray(Enumerable.Range(0, r.Next(0, 8)).Select(i => (JsonNode?)JsonValue.Create(r.Next(-3, 300))).ToArray()),
        _ => JsonValue.Create(double.NaN.ToString()), _ => JsonValue.Create("Infinity"),
    ];

    private static JsonNode Nested(int depth)
    {
        JsonNode node = new JsonArray();
        for (int i = 0; i < depth; i++) node = new JsonArray(node);
        return node;
    }

    private static string MutateJson(string valid, Random r)
    {
        if (r.Next(5) == 0) return MutateText(valid, r); // text-level: byte edits, truncation
        var root = JsonNode.Parse(valid)!;
        int edits = r.Next(1, 4);
        for (int e = 0; e < edits; e++)
        {
            var containers = new List<JsonNode>();
            Collect(root, containers);
            var target = containers[r.Next(containers.Count)];
            if (target is JsonObject obj && obj.Count > 0)
            {
                string key = obj.ElementAt(r.Next(obj.Count)).Key;
                if (r.Next(4) == 0) obj.Remove(key);
                else obj[key] = Replacements[r.Next(Replacements.Length)](r);
            }
            else if (target is JsonArray array && array.Count > 0)
            {
                int i = r.Next(array.Count);
                if (r.Next(4) == 0) array.RemoveAt(i);
                else array[i] = Replacements[r.Next(Replacements.Length)](r);
            }
        }
        return root.ToJsonString();
    }

    private static void Collect(JsonNode? node, List<JsonNode> into)
    {
        if (node is JsonObject obj) { into.Add(obj); foreach (var (_, child) in obj) Collect(child, into); }
        else if (node is JsonArray array) { into.Add(array); foreach (var child in array) Collect(child, into); }
    }

    private static string MutateText(string text, Random r)
    {
        var chars = new StringBuilder(text);
        int edits = r.Next(1, 6);
        for (int e = 0; e < edits && chars.Length > 0; e++)
        {
            int at = r.Next(chars.Length);
            switch (r.Next(4))
            {
                case 0: chars[at] = (char)r.Next(32, 127); break;
                case 1: chars.Remove(at, Math.Min(r.Next(1, 20), chars.Length - at)); break;
                case 2: chars.Insert(at, "{[\"1e999,:-".Substring(r.Next(10), 1)); break;
                default: chars.Length = at; break;
            }
        }
        return chars.ToString();
    }

    // ---- the input kinds ----

    [Fact]
    public void Safetensors_files_load_or_are_refused_cleanly()
    {
        byte[] valid = File.ReadAllBytes(Path.Combine(Fixtures.Diffusers("unet2d-small", "model"), ModelFolder.Weights));
        // A small valid file of every dtype-size class keeps cases fast; the fixture's own header drives header mutations.
        byte[] small = SmallSafetensors();
        using var temp = Fixtures.Temp();
        string path = temp.File("case.safetensors");
        Fuzz("safetensors", r => Convert.ToBase64String(MutateBytes(r.Next(3) == 0 ? HeaderOnly(valid, r) : small, r)), text =>
        {
            File.WriteAllBytes(path, Convert.FromBase64String(text));
            using var file = SafetensorsFile.Open(path);
            foreach (var name in file.Entries.Keys) file.ReadFloat(name).Dispose();
        }, seed: "0000000000001");
    }

    /// <summary>The fixture's header with its data cut to a few bytes: header mutations without megabytes per case.</summary>
    private static byte[] HeaderOnly(byte[] valid, Random r)
    {
        long headerLength = BitConverter.ToInt64(valid, 0);
        return valid[..(int)Math.Min(valid.Length, 8 + headerLength + r.Next(0, 64))];
    }

    private static byte[] SmallSafetensors()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("small.safetensors");
        using (var scope = TorchSharp.torch.NewDisposeScope())
            SafetensorsWriter.Write(path, new Dictionary<string, TorchSharp.torch.Tensor>
            {
                ["a.weight"] = TorchSharp.torch.arange(6, TorchSharp.torch.ScalarType.Float32).reshape(2, 3),
                ["b.bias"] = TorchSharp.torch.ones(4, TorchSharp.torch.ScalarType.Float16),
                ["c.index"] = TorchSharp.torch.arange(3, TorchSharp.torch.ScalarType.Int64),
            }, new Dictionary<string, string> { ["format"] = "pt" });
        return File.ReadAllBytes(path);
    }

    private static byte[] MutateBytes(byte[] valid, Random r)
    {
        var bytes = new List<byte>(valid);
        int edits = r.Next(1, 6);
        for (int e = 0; e < edits && bytes.Count > 0; e++)
        {
            int at = r.Next(bytes.Count);
            switch (r.Next(6))
            {
                case 0: bytes[at] ^= (byte)(1 << r.Next(8)); break;
                case 1: bytes[at] = (byte)r.Next(256); break;
                case 2: bytes.RemoveRange(at, bytes.Count - at); break; // truncate
                case 3: bytes.InsertRange(at, Enumerable.Range(0, r.Next(1, 64)).Select(_ => (byte)r.Next(256))); break;
                case 4: // the header length itself
                    BitConverter.GetBytes(r.Next(3) switch { 0 => -1L, 1 => long.MaxValue, _ => (long)r.Next(0, valid.Length * 2) }).CopyTo(Span(bytes)); break;
                default: if (at < bytes.Count - 1) (bytes[at], bytes[at + 1]) = (bytes[at + 1], bytes[at]); break;
            }
        }
        return [.. bytes];
    }

    private static Span<byte> Span(List<byte> bytes)
    {
        while (bytes.Count < 8) bytes.Add(0);
        return System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes)[..8];
    }

    [Fact]
    public void Model_configs_parse_or_are_refused_cleanly()
    {
        string unet = File.ReadAllText(Path.Combine(Fixtures.Diffusers("unet2d-small", "model"), ModelFolder.Config));
        string dit = File.ReadAllText(Path.Combine(Fixtures.Diffusers("dit-small", "model"), ModelFolder.Config));
        Fuzz("config.json", r => MutateJson(r.Next(2) == 0 ? unet : dit, r), text =>
        {
            var config = ConfigJson.Parse(text);
            if (config.ClassName == UNet2DConfig.ClassName) UNet2DConfig.FromJson(config);
            else if (config.ClassName == DiTConfig.ClassName) DiTConfig.FromJson(config);
            else return;
            // the resource walk over whatever the config says: an estimate, or a user error (never an overflow or a crash)
            var estimate = ModelFamilies.Estimate(config);
            if (estimate.Parameters < 0 || estimate.Macs < 0 || estimate.ForwardActivationBytesPerSample < 0)
                throw new InvalidOperationException($"negative estimate {estimate}");
        }, seed: "0000000000002");
    }

    [Fact]
    public void Scheduler_configs_parse_or_are_refused_cleanly()
    {
        string valid = File.ReadAllText(Path.Combine(Fixtures.Diffusers("unet2d-small"), ModelFolder.SchedulerConfig));
        Fuzz("scheduler_config.json", r => MutateJson(valid, r), text => SchedulerConfig.Parse(text), seed: "0000000000003");
    }

    [Fact]
    public void Onnx_model_infos_parse_or_are_refused_cleanly()
    {
        using var temp = Fixtures.Temp();
        string bundle = new Inference.Onnx.TinyOnnxBundle { NumClasses = 10, NullClass = 10 }.WriteTo(temp.File("bundle"));
        string valid = File.ReadAllText(Path.Combine(bundle, ModelFolder.OnnxInfo));
        Fuzz("onnx_model.json", r => MutateJson(valid, r), text => OnnxModelInfo.Parse(text), seed: "0000000000004");
    }

    [Fact]
    public void Batch_plans_parse_or_are_refused_cleanly()
    {
        string planPath = Path.Combine(Fixtures.RepoRoot, "samples", "plans", "mnist-sweep.json");
        string valid = File.ReadAllText(planPath);
        Fuzz("batch plan", r => MutateJson(valid, r), text => BatchPlan.Parse(text, planPath), seed: "0000000000005");
    }

    // ---- what the harness found, kept as regression tests ----

    [Fact]
    public void Found_a_fractional_or_tiny_integer_field_is_refused_not_truncated_to_zero()
    {
        string dit = File.ReadAllText(Path.Combine(Fixtures.Diffusers("dit-small", "model"), ModelFolder.Config));
        var root = JsonNode.Parse(dit)!.AsObject();
        root["patch_size"] = 1e-320; // was truncated to 0, then divided by: DivideByZeroException
        var error = Assert.Throws<ModelFormatException>(() => DiTConfig.FromJson(ConfigJson.Parse(root.ToJsonString())));
        Assert.Contains("'patch_size' must be a whole number", error.Message);
        root["patch_size"] = 0;
        Assert.Contains("patch_size must be at least 1", Assert.Throws<ModelFormatException>(() => DiTConfig.FromJson(ConfigJson.Parse(root.ToJsonString()))).Message);
        root["patch_size"] = 2.0; // a whole number written as a double is fine
        Assert.Equal(2, DiTConfig.FromJson(ConfigJson.Parse(root.ToJsonString())).PatchSize);
    }

    [Fact]
    public void Found_json_errors_quoting_several_lines_of_the_file_are_reported_on_one_line()
    {
        const string broken = "{\n  \"num_train_timesteps\": nell,\n  \"clip_sample\": false\n}";
        var scheduler = Assert.Throws<SchedulerConfigException>(() => SchedulerConfig.Parse(broken));
        Assert.DoesNotContain('\n', scheduler.Message);
        var plan = Assert.Throws<BatchPlanException>(() => BatchPlan.Parse(broken, "plan.json"));
        Assert.DoesNotContain('\n', plan.Message);
        var info = Assert.Throws<InvalidDataException>(() => OnnxModelInfo.Parse(broken));
        Assert.DoesNotContain('\n', info.Message);
        Assert.Equal("a b c", Messages.OneLine("a\r\n  b\n\nc"));
    }

    [Fact]
    public void Found_unet_fields_without_lower_bounds_and_keys_with_line_breaks()
    {
        string unet = File.ReadAllText(Path.Combine(Fixtures.Diffusers("unet2d-small", "model"), ModelFolder.Config));
        foreach (var (key, value, expected) in new (string, JsonNode, string)[]
        {
            ("norm_num_groups", 0, "norm_num_groups must be at least 1"), // was a DivideByZeroException
            ("attention_head_dim", -4, "attention_head_dim must be at least 1"),
            ("downsample_padding", 1000, "downsample_padding must be 0 or 1"), // ran for over a minute (issue 16)
            ("block_out_channels", new JsonArray(32, 0, 64), "block_out_channels must be positive"),
            ("time_embedding_dim", 1e308, "'time_embedding_dim' must be a whole number"), // was "unexpected failure" (issue 16)
        })
        {
            var root = JsonNode.Parse(unet)!.AsObject();
            root[key] = value;
            Assert.Contains(expected, Assert.Throws<ModelFormatException>(() => UNet2DConfig.FromJson(ConfigJson.Parse(root.ToJsonString()))).Message);
        }

        string planPath = Path.Combine(Fixtures.RepoRoot, "samples", "plans", "mnist-sweep.json");
        var plan = JsonNode.Parse(File.ReadAllText(planPath))!.AsObject();
        plan["prune"]!.AsObject()["itera\ntions"] = 3;
        var error = Assert.Throws<BatchPlanException>(() => BatchPlan.Parse(plan.ToJsonString(), planPath));
        Assert.Contains("unknown key", error.Message);
        Assert.DoesNotContain('\n', error.Message);
    }
}
