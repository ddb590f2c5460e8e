using DiffusionPrune.Models.Layers;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Models;

/// <summary>
/// Loading diffusers folders as users have them: legacy key names, shards, fp16 variants, pipelines,
/// and strictness (missing / unexpected / mis-shaped keys, pickle files, broken config) with clear errors.
/// </summary>
public class LoaderTests
{
    private static string UNetFixture => Fixtures.Diffusers("unet2d-small", "model");
    private static string DiTFixture => Fixtures.Diffusers("dit-small", "model");

    // ---- weights in other layouts give the same model ----

    [Fact]
    public void Legacy_attention_key_names_load_to_the_same_model()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(UNetFixture, "config.json"), temp.File("config.json"));
        var weights = DiffusersModelLoader.ReadWeights(UNetFixture);
        try
        {
            var legacy = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            int renamed = 0;
            foreach (var (key, value) in weights)
            {
                string name = key;
                foreach (var (modern, old) in new[] { ("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn") })
                {
                    var match = System.Text.RegularExpressions.Regex.Match(key, $@"^(.*attentions\.\d+)\.{System.Text.RegularExpressions.Regex.Escape(modern)}\.(weight|bias)$");
                    if (match.Success) { name = $"{match.Groups[1].Value}.{old}.{match.Groups[2].Value}"; renamed++; }
                }
                legacy[name] = value;
            }
            // unet2d-small: 2 attention blocks in down_blocks.1, 3 in up_blocks.1, 1 in the mid block; 4 projections x (weight, bias) each.
            Assert.Equal(6 * 4 * 2, renamed);
            Assert.Contains("mid_block.attentions.0.proj_attn.weight", legacy.Keys);
            Assert.DoesNotContain(legacy.Keys, k => k.Contains("to_q"));
            SafetensorsWriter.Write(temp.File("diffusion_pytorch_model.safetensors"), legacy);
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }

        using var original = ModelFamilies.Load(UNetFixture);
        using var fromLegacy = ModelFamilies.Load(temp.Path);
        AssertSameOutputs(original, fromLegacy, exact: true);
    }

    [Fact]
    public void Sharded_weights_with_an_index_load_to_the_same_model()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(UNetFixture, "config.json"), temp.File("config.json"));
        var weights = DiffusersModelLoader.ReadWeights(UNetFixture);
        try
        {
            var keys = weights.Keys.Order(StringComparer.Ordinal).ToList();
            var first = keys.Take(keys.Count / 2).ToList();
            var second = keys.Skip(keys.Count / 2).ToList();
            const string shard1 = "diffusion_pytorch_model-00001-of-00002.safetensors";
            const string shard2 = "diffusion_pytorch_model-00002-of-00002.safetensors";
            SafetensorsWriter.Write(temp.File(shard1), first.Select(k => KeyValuePair.Create(k, weights[k])));
            SafetensorsWriter.Write(temp.File(shard2), second.Select(k => KeyValuePair.Create(k, weights[k])));
            var map = new JsonObject();
            foreach (var k in first) map[k] = shard1;
            foreach (var k in second) map[k] = shard2;
            var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = 6492676 }, ["weight_map"] = map };
            File.WriteAllText(temp.File("diffusion_pytorch_model.safetensors.index.json"), index.ToJsonString());
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }

        using var original = ModelFamilies.Load(UNetFixture);
        using var sharded = ModelFamilies.Load(temp.Path);
        AssertSameOutputs(original, sharded, exact: true);
    }

    [Fact]
    public void Shard_index_naming_a_missing_shard_is_a_clear_error()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(UNetFixture, "config.json"), temp.File("config.json"));
        File.WriteAllText(temp.File("diffusion_pytorch_model.safetensors.index.json"),
            "{\"weight_map\": {\"conv_in.weight\": \"diffusion_pytorch_model-00001-of-00002.safetensors\"}}");
        var e = Assert.Throws<ModelFormatException>(() => ModelFamilies.Load(temp.Path));
        Assert.Contains("diffusion_pytorch_model-00001-of-00002.safetensors", e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Theory]
    [InlineData("{\"weight_map\": {\"conv_in.weight\": 3}}", "conv_in.weight")]
    [InlineData("{\"weight_map\": {\"conv_in.weight\": \"../elsewhere.safetensors\"}}", "plain file name")]
    [InlineData("{\"weight_map\": []}", "weight_map")]
    [InlineData("[1]", "not a valid shard index")]
    public void Malformed_shard_index_is_a_clear_error(string index, string expected)
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(UNetFixture, "config.json"), temp.File("config.json"));
        File.WriteAllText(temp.File("diffusion_pytorch_model.safetensors.index.json"), index);
        var e = Assert.Throws<ModelFormatException>(() => ModelFamilies.Load(temp.Path));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Fp16_variant_loads_within_fp16_rounding()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(UNetFixture, "config.json"), temp.File("config.json"));
        var weights = DiffusersModelLoader.ReadWeights(UNetFixture);
        try
        {
            using var scope = NewDisposeScope();
            SafetensorsWriter.Write(temp.File("diffusion_pytorch_model.fp16.safetensors"),
                weights.Select(kv => KeyValuePair.Create(kv.Key, kv.Value.to_type(ScalarType.Float16))));
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }
        using (var file = SafetensorsFile.Open(temp.File("diffusion_pytorch_model.fp16.safetensors")))
            Assert.All(file.Entries.Values, e => Assert.Equal(SafetensorsDType.F16, e.DType));

        using var original = ModelFamilies.Load(UNetFixture);
        using var half = ModelFamilies.Load(temp.Path); // no plain file: the fp16 variant is found
        using var explicitVariant = ModelFamilies.Load(temp.Path, variant: "fp16");
        using var scope2 = NewDisposeScope();

        // Every loaded weight is exactly the fp16 rounding of the original, held in float32.
        var expected = original.state_dict();
        foreach (var (key, value) in half.state_dict())
        {
            Assert.Equal(ScalarType.Float32, value.dtype);
            Assert.True(value.eq(expected[key].to_type(ScalarType.Float16).to_type(ScalarType.Float32)).all().item<bool>(), key);
        }
        AssertSameOutputs(half, explicitVariant, exact: true);
        using var noGrad = no_grad();
        var (sample, timestep) = Inputs();
        double error = Fixtures.RelativeError(half.Forward(sample, timestep), original.Forward(sample, timestep));
        Assert.True(error < 1e-2, $"fp16 weights changed the output by {error} (relative)");
        Assert.True(error > 0, "an fp16 copy should not be bit-identical to float32 weights");
    }

    [Fact]
    public void Pipeline_folder_resolves_to_the_unet_and_finds_the_scheduler()
    {
        using var temp = Fixtures.Temp();
        string unet = Path.Combine(temp.Path, "unet");
        string scheduler = Path.Combine(temp.Path, "scheduler");
        Directory.CreateDirectory(unet);
        Directory.CreateDirectory(scheduler);
        foreach (var f in Directory.GetFiles(UNetFixture)) File.Copy(f, Path.Combine(unet, Path.GetFileName(f)));
        File.Copy(Fixtures.Diffusers("unet2d-small", "scheduler_config.json"), Path.Combine(scheduler, "scheduler_config.json"));
        File.WriteAllText(temp.File("model_index.json"),
            "{\"_class_name\": \"DDIMPipeline\", \"_diffusers_version\": \"0.40.0\", \"scheduler\": [\"diffusers\", \"DDIMScheduler\"], \"unet\": [\"diffusers\", \"UNet2DModel\"]}");

        Assert.Equal(Path.GetFullPath(unet), Path.GetFullPath(DiffusersModelLoader.ResolveModelFolder(temp.Path)));
        Assert.Equal(Path.GetFullPath(Path.Combine(scheduler, "scheduler_config.json")), Path.GetFullPath(DiffusersModelLoader.FindSchedulerConfig(temp.Path)!));
        // From the unet folder itself the pipeline's scheduler is found too.
        Assert.Equal(Path.GetFullPath(Path.Combine(scheduler, "scheduler_config.json")), Path.GetFullPath(DiffusersModelLoader.FindSchedulerConfig(unet)!));

        using var original = ModelFamilies.Load(UNetFixture);
        using var fromPipeline = ModelFamilies.Load(temp.Path);
        Assert.IsType<UNet2DModel>(fromPipeline);
        AssertSameOutputs(original, fromPipeline, exact: true);
    }

    [Fact]
    public void Pipeline_folder_without_a_denoiser_subfolder_is_a_clear_error()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("model_index.json"), "{}");
        var e = Assert.Throws<ModelFormatException>(() => DiffusersModelLoader.ResolveModelFolder(temp.Path));
        Assert.Contains("unet/", e.Message);
    }

    [Fact]
    public void Save_then_load_gives_identical_outputs_and_config()
    {
        using var temp = Fixtures.Temp();
        using var original = ModelFamilies.Load(UNetFixture);
        DiffusersModelLoader.Save(original, temp.Path);
        using var reloaded = ModelFamilies.Load(temp.Path);
        AssertSameOutputs(original, reloaded, exact: true);
        Assert.Equal(original.ConfigToJson().ToJsonString(), reloaded.ConfigToJson().ToJsonString());
        using (var file = SafetensorsFile.Open(temp.File("diffusion_pytorch_model.safetensors")))
            Assert.Equal("pt", file.Metadata["format"]);

        // The saved config reads back with diffusers' meaning: same keys and values as the fixture's (except the version).
        var fixtureConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(UNetFixture, "config.json")))!.AsObject();
        var savedConfig = JsonNode.Parse(File.ReadAllText(temp.File("config.json")))!.AsObject();
        foreach (var (key, value) in fixtureConfig)
        {
            if (key == "_diffusers_version") continue;
            Assert.True(savedConfig.ContainsKey(key), $"saved config lacks '{key}'");
            Assert.True(JsonNode.DeepEquals(value, savedConfig[key]) || NumbersEqual(value, savedConfig[key]), $"'{key}': fixture {value?.ToJsonString()} vs saved {savedConfig[key]?.ToJsonString()}");
        }
    }

    [Fact]
    public void DiT_save_then_load_gives_identical_outputs_and_config()
    {
        using var temp = Fixtures.Temp();
        using var original = ModelFamilies.Load(DiTFixture);
        DiffusersModelLoader.Save(original, temp.Path);
        using var reloaded = ModelFamilies.Load(temp.Path);
        Assert.Equal(original.ConfigToJson().ToJsonString(), reloaded.ConfigToJson().ToJsonString());
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var sample = randn([2, 4, 16, 16], generator: new Generator(3));
        var timestep = tensor(new long[] { 3, 700 });
        var labels = tensor(new long[] { 1, 10 });
        Assert.True(original.Forward(sample, timestep, labels).eq(reloaded.Forward(sample, timestep, labels)).all().item<bool>());
    }

    // ---- strictness ----

    [Fact]
    public void Missing_key_is_an_error_naming_it()
    {
        using var temp = WithEditedWeights(w => { w["conv_in.bias"].Dispose(); w.Remove("conv_in.bias"); });
        var e = Assert.Throws<ModelFormatException>(() => ModelFamilies.Load(temp.Path));
        Assert.Contains("missing keys: conv_in.bias", e.Message);
        Assert.DoesNotContain("unexpected", e.Message);
    }

    [Fact]
    public void Unexpected_key_is_an_error_naming_it()
    {
        using var temp = WithEditedWeights(w => w["down_blocks.0.extra_layer.weight"] = ones(3));
        var e = Assert.Throws<ModelFormatException>(() => ModelFamilies.Load(temp.Path));
        Assert.Contains("unexpected keys: down_blocks.0.extra_layer.weight", e.Message);
        Assert.DoesNotContain("missing", e.Message);
    }

    [Fact]
    public void Wrong_shape_is_an_error_naming_the_key_and_both_shapes()
    {
        using var temp = WithEditedWeights(w =>
        {
            w["up_blocks.1.attentions.2.to_k.weight"].Dispose();
            w["up_blocks.1.attentions.2.to_k.weight"] = zeros(64, 32);
        });
        var e = Assert.Throws<ModelFormatException>(() => ModelFamilies.Load(temp.Path));
        Assert.Contains("'up_blocks.1.attentions.2.to_k.weight'", e.Message);
        Assert.Contains("[64, 32]", e.Message);
        Assert.Contains("[64, 64]", e.Message);
    }

    [Fact]
    public void Every_name_and_shape_is_checked_before_any_weight_is_copied()
    {
        // The mis-shaped tensor sorts after most others: a loader that copied as it checked would have changed the model.
        using var temp = WithEditedWeights(w =>
        {
            w["up_blocks.1.attentions.2.to_k.weight"].Dispose();
            w["up_blocks.1.attentions.2.to_k.weight"] = zeros(64, 32);
        });
        using var model = ModelFamilies.Create(ConfigJson.Load(temp.File("config.json")));
        var before = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        using (var weights = DiffusersModelLoader.OpenWeights(temp.Path))
        {
            Assert.Equal(new long[] { 64, 32 }, weights.Tensors["up_blocks.1.attentions.2.to_k.weight"].Shape);
            Assert.Throws<ModelFormatException>(() => DiffusersModelLoader.LoadStrict(model, weights, temp.Path));
        }
        Assert.All(model.state_dict(), kv => Assert.True(kv.Value.equal(before[kv.Key]).all().item<bool>(), $"{kv.Key} was changed by a refused load"));
        foreach (var t in before.Values) t.Dispose();
    }

    [Fact]
    public void Loading_from_disk_tensor_by_tensor_gives_the_same_weights_as_reading_them_all()
    {
        using var streamed = ModelFamilies.Load(UNetFixture);
        var all = DiffusersModelLoader.ReadWeights(UNetFixture);
        try
        {
            Assert.Equal(all.Keys.Order(), streamed.state_dict().Keys.Order());
            Assert.All(streamed.state_dict(), kv => Assert.True(kv.Value.equal(all[kv.Key]).all().item<bool>(), kv.Key));
        }
        finally
        {
            foreach (var t in all.Values) t.Dispose();
        }
    }

    [Fact]
    public void Only_a_pickle_bin_file_is_refused_mentioning_pickle_and_safetensors()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(UNetFixture, "config.json"), temp.File("config.json"));
        // A pickle stream header (protocol 2) and junk: the loader must refuse without reading it.
        File.WriteAllBytes(temp.File("diffusion_pytorch_model.bin"), [0x80, 0x02, 0x7D, 0x71, 0x00, 0x2E]);
        var e = Assert.Throws<ModelFormatException>(() => ModelFamilies.Load(temp.Path));
        Assert.Contains("pickle", e.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("safetensors", e.Message);
        Assert.Contains("diffusion_pytorch_model.bin", e.Message);
    }

    [Fact]
    public void No_weights_at_all_is_a_clear_error()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(UNetFixture, "config.json"), temp.File("config.json"));
        var e = Assert.Throws<ModelFormatException>(() => ModelFamilies.Load(temp.Path));
        Assert.Contains("diffusion_pytorch_model.safetensors", e.Message);
    }

    [Theory]
    [InlineData("{ \"_class_name\": \"UNet2DModel\", ")]
    [InlineData("<html>not json</html>")]
    public void Config_that_is_not_json_is_a_clear_error(string text)
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("config.json"), text);
        File.Copy(Path.Combine(UNetFixture, "diffusion_pytorch_model.safetensors"), temp.File("diffusion_pytorch_model.safetensors"));
        var e = Assert.Throws<ModelFormatException>(() => ModelFamilies.Load(temp.Path));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("not valid JSON", e.Message);
    }

    [Fact]
    public void Config_that_is_json_but_not_an_object_or_has_wrong_types_is_a_clear_error()
    {
        var e1 = Assert.Throws<ModelFormatException>(() => ConfigJson.Parse("[1, 2]"));
        Assert.Contains("JSON object", e1.Message);
        var e2 = Assert.Throws<ModelFormatException>(() => UNet2DConfig.FromJson(ConfigJson.Parse("{\"layers_per_block\": \"two\"}")));
        Assert.Contains("layers_per_block", e2.Message);
        var e3 = Assert.Throws<ModelFormatException>(() => ModelFamilies.Create(ConfigJson.Parse("{\"_class_name\": \"VQModel\"}")));
        Assert.Contains("VQModel", e3.Message);
        var e4 = Assert.Throws<ModelFormatException>(() => ModelFamilies.Create(ConfigJson.Parse("{\"_class_name\": 5}")));
        Assert.Contains("_class_name", e4.Message);
    }

    // ---- config parsing ----

    [Fact]
    public void Null_attention_head_dim_means_one_head_of_full_width_while_absent_means_8()
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(UNetFixture, "config.json")))!.AsObject();

        json["attention_head_dim"] = null;
        using (var model = new UNet2DModel(UNet2DConfig.FromJson(new ConfigJson(json, "null-head-dim"))))
        {
            Assert.Null(model.Config.AttentionHeadDim);
            foreach (var attention in AllAttentions(model))
            {
                Assert.Equal(1, attention.Heads);
                Assert.Equal(64, attention.DimHead); // every attention block of unet2d-small has 64 channels
                Assert.Equal(64, attention.QueryDim);
            }
            Assert.Equal(6, AllAttentions(model).Count);
            Assert.Equal(JsonValueKind.Null, JsonKind(model.Config.ToJson()["attention_head_dim"]));
        }

        json.Remove("attention_head_dim");
        using (var model = new UNet2DModel(UNet2DConfig.FromJson(new ConfigJson(json, "absent-head-dim"))))
        {
            Assert.Equal(8, model.Config.AttentionHeadDim);
            foreach (var attention in AllAttentions(model))
            {
                Assert.Equal(8, attention.Heads);
                Assert.Equal(8, attention.DimHead);
            }
        }
    }

    // ---- helpers ----

    private static List<Attention> AllAttentions(UNet2DModel model)
    {
        var list = new List<Attention>();
        foreach (var block in model.DownBlocks)
            if (block.Attentions is { } a) list.AddRange(a.Cast<Attention>());
        if (model.MidBlock?.Attentions is { } mid) list.AddRange(mid.Cast<Attention>());
        foreach (var block in model.UpBlocks)
            if (block.Attentions is { } a) list.AddRange(a.Cast<Attention>());
        return list;
    }

    private static JsonValueKind JsonKind(JsonNode? node) => node is null ? JsonValueKind.Null : node.GetValueKind();

    private static bool NumbersEqual(JsonNode? a, JsonNode? b)
        => a is JsonValue va && b is JsonValue vb && va.GetValueKind() == JsonValueKind.Number && vb.GetValueKind() == JsonValueKind.Number
           && va.GetValue<double>() == vb.GetValue<double>();

    /// <summary>The unet2d-small fixture copied into a temp folder with its weights edited.</summary>
    private static TempFolder WithEditedWeights(Action<Dictionary<string, Tensor>> edit)
    {
        var temp = Fixtures.Temp();
        File.Copy(Path.Combine(UNetFixture, "config.json"), temp.File("config.json"));
        var weights = DiffusersModelLoader.ReadWeights(UNetFixture);
        try
        {
            edit(weights);
            SafetensorsWriter.Write(temp.File("diffusion_pytorch_model.safetensors"), weights);
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }
        return temp;
    }

    private static (Tensor sample, Tensor timestep) Inputs()
        => (randn([2, 1, 32, 32], generator: new Generator(11)), tensor(new long[] { 10, 999 }));

    private static void AssertSameOutputs(DiffusionModel expected, DiffusionModel actual, bool exact)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var (sample, timestep) = Inputs();
        var a = expected.Forward(sample, timestep);
        var b = actual.Forward(sample, timestep);
        if (exact)
            Assert.True(a.eq(b).all().item<bool>(), $"outputs differ by {(a - b).abs().max().item<float>()}");
        else
            Assert.True(Fixtures.RelativeError(b, a) < 1e-5);
    }
}

public class ConfigNullEntryTests
{
    [Fact]
    public void A_null_inside_a_config_array_is_a_clear_error_naming_the_key()
    {
        var config = DiffusionPrune.Models.ConfigJson.Parse("""{"_class_name": "UNet2DModel", "down_block_types": [null, "DownBlock2D"]}""");
        var error = Assert.Throws<DiffusionPrune.Models.ModelFormatException>(() => DiffusionPrune.Models.UNet2DConfig.FromJson(config));
        Assert.Contains("down_block_types", error.Message);
    }
}
