using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Models;

/// <summary>
/// AutoencoderKL against vae-small, whose mean, logvar and decoded image diffusers computed from the fixture's image and
/// latents; config validation and strict loading (missing tensors, old attention names, half-precision files).
/// </summary>
public class AutoencoderKLTests
{
    private static string VaeFolder => Fixtures.Diffusers("vae-small", "model");
    private static string IoFile => Fixtures.Diffusers("vae-small", "io.safetensors");

    private static JsonObject FixtureConfigJson() => JsonNode.Parse(File.ReadAllText(Path.Combine(VaeFolder, "config.json")))!.AsObject();

    /// <summary>
    /// Writes the fixture config and the fixture weights, changed by <paramref name="change"/>, as a vae folder in
    /// <paramref name="temp"/>. The tensors live in a scope of their own, so models loaded afterwards own theirs.
    /// </summary>
    private static void WriteVaeFolder(TempFolder temp, Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>> change, string weightsFile = ModelFolder.Weights)
    {
        using var scope = NewDisposeScope();
        File.Copy(Path.Combine(VaeFolder, ModelFolder.Config), temp.File(ModelFolder.Config), overwrite: true);
        var weights = DiffusersModelLoader.ReadSafetensors(Path.Combine(VaeFolder, ModelFolder.Weights));
        SafetensorsWriter.Write(temp.File(weightsFile), change(weights));
    }

    private static bool Identical(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Fact]
    public void Encode_gives_the_mean_and_logvar_diffusers_computed_for_the_fixture_images()
    {
        using var model = AutoencoderKL.Load(VaeFolder);
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var (mean, logvar) = model.Encode(io.ReadFloat("image"));
        var referenceMean = io.ReadFloat("mean");
        var referenceLogvar = io.ReadFloat("logvar");
        Assert.Equal(referenceMean.shape, mean.shape);
        Assert.Equal(referenceLogvar.shape, logvar.shape);
        double meanError = Fixtures.RelativeError(mean, referenceMean);
        double logvarError = Fixtures.RelativeError(logvar, referenceLogvar);
        Assert.True(meanError <= 1e-4, $"mean error {meanError}");
        Assert.True(logvarError <= 1e-4, $"logvar error {logvarError}");
    }

    [Fact]
    public void Decode_gives_the_image_diffusers_computed_for_the_fixture_latents()
    {
        using var model = AutoencoderKL.Load(VaeFolder);
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var decoded = model.Decode(io.ReadFloat("latent"));
        var reference = io.ReadFloat("decoded");
        Assert.Equal(reference.shape, decoded.shape);
        double error = Fixtures.RelativeError(decoded, reference);
        Assert.True(error <= 1e-4, $"error {error}");
    }

    [Fact]
    public void The_log_variance_is_clamped_to_the_range_diffusers_uses()
    {
        using var model = AutoencoderKL.Load(VaeFolder);
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        // quant_conv's last 4 outputs are the log-variance: push two channels far above 20 and two far below -30.
        var bias = model.state_dict()["quant_conv.bias"];
        bias[4..6].fill_(1000f);
        bias[6..8].fill_(-1000f);
        var (mean, logvar) = model.Encode(io.ReadFloat("image"));
        Assert.True(logvar[.., 0..2].eq(AutoencoderKL.MaxLogvar).all().item<bool>());
        Assert.True(logvar[.., 2..4].eq(AutoencoderKL.MinLogvar).all().item<bool>());
        Assert.True(Fixtures.RelativeError(mean, io.ReadFloat("mean")) <= 1e-4, "the mean does not depend on the log-variance channels");
    }

    [Fact]
    public void The_fixture_config_is_read_with_every_field()
    {
        var config = AutoencoderKLConfig.FromJson(ConfigJson.Load(Path.Combine(VaeFolder, "config.json")));
        Assert.Equal(3, config.InChannels);
        Assert.Equal(3, config.OutChannels);
        Assert.Equal(4, config.LatentChannels);
        Assert.Equal(new[] { 32, 64 }, config.BlockOutChannels);
        Assert.Equal(1, config.LayersPerBlock);
        Assert.Equal(new[] { "DownEncoderBlock2D", "DownEncoderBlock2D" }, config.DownBlockTypes);
        Assert.Equal(new[] { "UpDecoderBlock2D", "UpDecoderBlock2D" }, config.UpBlockTypes);
        Assert.Equal("silu", config.ActFn);
        Assert.Equal(8, config.NormNumGroups);
        Assert.Equal(new[] { 32, 32 }, config.SampleSize);
        Assert.Equal(0.18215, config.ScalingFactor);
        Assert.Null(config.ShiftFactor);
        Assert.Null(config.LatentsMean);
        Assert.Null(config.LatentsStd);
        Assert.True(config.ForceUpcast);
        Assert.True(config.MidBlockAddAttention);
        Assert.True(config.UseQuantConv);
        Assert.True(config.UsePostQuantConv);

        using var model = AutoencoderKL.Load(VaeFolder);
        Assert.Equal(0.18215, model.ScalingFactor);
        Assert.Null(model.ShiftFactor);
        Assert.Equal(2, model.DownsampleFactor);
    }

    [Fact]
    public void Absent_keys_take_diffusers_defaults_and_present_ones_round_trip_through_json()
    {
        var defaults = AutoencoderKLConfig.FromJson(ConfigJson.Parse("""{"_class_name": "AutoencoderKL"}"""));
        Assert.Equal(new[] { 64 }, defaults.BlockOutChannels);
        Assert.Equal(32, defaults.NormNumGroups);
        Assert.Equal(1, defaults.LayersPerBlock);
        Assert.Equal(0.18215, defaults.ScalingFactor);

        var root = FixtureConfigJson();
        root["shift_factor"] = JsonNode.Parse("0.0609");
        root["latents_mean"] = JsonNode.Parse("[0.1, -0.2, 0.3, -0.4]");
        root["latents_std"] = JsonNode.Parse("[1.5, 2.5, 3.5, 4.5]");
        root["sample_size"] = JsonNode.Parse("[32, 48]");
        root["force_upcast"] = JsonNode.Parse("false");
        var config = AutoencoderKLConfig.FromJson(new ConfigJson(root, "vae/config.json"));
        Assert.Equal(0.0609, config.ShiftFactor);
        Assert.Equal(new[] { 0.1, -0.2, 0.3, -0.4 }, config.LatentsMean);
        Assert.Equal(new[] { 32, 48 }, config.SampleSize);
        Assert.False(config.ForceUpcast);

        var again = AutoencoderKLConfig.FromJson(ConfigJson.Parse(config.ToJson().ToJsonString(), "round trip"));
        Assert.Equal(config.ToJson().ToJsonString(), again.ToJson().ToJsonString());
        Assert.Equal(config.LatentsStd, again.LatentsStd);
    }

    [Theory]
    [InlineData("down_block_types", """["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]""", "down block type 'AttnDownEncoderBlock2D' is not supported")]
    [InlineData("down_block_types", """["DownBlock2D", "DownEncoderBlock2D"]""", "down block type 'DownBlock2D' is not supported")]
    [InlineData("up_block_types", """["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]""", "up block type 'AttnUpDecoderBlock2D' is not supported")]
    [InlineData("up_block_types", """["UpDecoderBlock2D"]""", "one entry per resolution")]
    [InlineData("act_fn", "\"tanh\"", "activation 'tanh' is not supported")]
    [InlineData("norm_num_groups", "12", "not a multiple of norm_num_groups 12")]
    [InlineData("norm_num_groups", "null", "norm_num_groups null is not supported")]
    [InlineData("layers_per_block", "0", "layers_per_block must be at least 1")]
    [InlineData("latent_channels", "2.5", "'latent_channels' must be a whole number")]
    [InlineData("scaling_factor", "0", "scaling_factor must be a positive number")]
    [InlineData("scaling_factor", "null", "scaling_factor null is not supported")]
    [InlineData("shift_factor", "\"none\"", "'shift_factor' has the wrong type")]
    [InlineData("latents_mean", "[0.1, 0.2]", "latents_mean has 2 entries but latent_channels is 4")]
    [InlineData("latents_std", "[1, 1, 0, 1]", "latents_std must be finite positive numbers")]
    [InlineData("latents_std", "\"unit\"", "'latents_std' must be a list of numbers or null")]
    [InlineData("sample_size", "[32, 32, 3]", "sample_size must be one or two positive numbers")]
    [InlineData("use_quant_conv", "\"yes\"", "'use_quant_conv' has the wrong type")]
    [InlineData("mid_block_add_attention", "1", "'mid_block_add_attention' has the wrong type")]
    [InlineData("_class_name", "\"AutoencoderTiny\"", "describes a 'AutoencoderTiny', not an AutoencoderKL")]
    public void Unknown_or_inconsistent_config_values_are_refused_with_what_was_wrong(string key, string json, string message)
    {
        var root = FixtureConfigJson();
        root[key] = JsonNode.Parse(json);
        var error = Assert.Throws<ModelFormatException>(() => AutoencoderKLConfig.FromJson(new ConfigJson(root, "vae/config.json")));
        Assert.Contains(message, error.Message);
        Assert.Contains("vae/config.json", error.Message);
    }

    [Fact]
    public void A_weight_file_missing_a_tensor_is_refused_naming_it()
    {
        using var temp = Fixtures.Temp();
        WriteVaeFolder(temp, weights =>
        {
            weights.Remove("decoder.up_blocks.1.resnets.0.conv_shortcut.bias");
            return weights;
        });
        var error = Assert.Throws<ModelFormatException>(() => AutoencoderKL.Load(temp.Path));
        Assert.Contains("missing keys: decoder.up_blocks.1.resnets.0.conv_shortcut.bias", error.Message);
    }

    [Fact]
    public void Extra_or_mis_shaped_tensors_are_refused_naming_them()
    {
        using var temp = Fixtures.Temp();
        WriteVaeFolder(temp, weights =>
        {
            weights["encoder.mid_block.attentions.1.to_q.weight"] = zeros(64, 64);
            return weights;
        });
        var error = Assert.Throws<ModelFormatException>(() => AutoencoderKL.Load(temp.Path));
        Assert.Contains("unexpected keys: encoder.mid_block.attentions.1.to_q.weight", error.Message);

        WriteVaeFolder(temp, weights =>
        {
            weights["quant_conv.weight"] = zeros(8, 8, 3, 3);
            return weights;
        });
        error = Assert.Throws<ModelFormatException>(() => AutoencoderKL.Load(temp.Path));
        Assert.Contains("tensor 'quant_conv.weight' has shape [8, 8, 3, 3]", error.Message);
    }

    [Fact]
    public void Old_attention_names_load_the_same_model_as_the_new_ones()
    {
        using var temp = Fixtures.Temp();
        var oldNames = new Dictionary<string, string> { ["to_q"] = "query", ["to_k"] = "key", ["to_v"] = "value", ["to_out.0"] = "proj_attn" };
        WriteVaeFolder(temp, weights => weights.ToDictionary(
            kv => oldNames.Aggregate(kv.Key, (key, names) => key.Replace($".attentions.0.{names.Key}.", $".attentions.0.{names.Value}.")),
            kv => kv.Value, StringComparer.Ordinal));
        using (var written = SafetensorsFile.Open(temp.File(ModelFolder.Weights)))
        {
            // 2 mid blocks x 4 projections x (weight, bias) under the old names, none left under the new ones.
            Assert.Equal(16, written.Entries.Keys.Count(k => k.Contains(".query.") || k.Contains(".key.") || k.Contains(".value.") || k.Contains(".proj_attn.")));
            Assert.DoesNotContain(written.Entries.Keys, k => k.Contains(".to_q.") || k.Contains(".to_k.") || k.Contains(".to_v.") || k.Contains(".to_out."));
        }

        using var old = AutoencoderKL.Load(temp.Path);
        using var current = AutoencoderKL.Load(VaeFolder);
        using var io = SafetensorsFile.Open(IoFile);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var image = io.ReadFloat("image");
        var latent = io.ReadFloat("latent");
        var (oldMean, oldLogvar) = old.Encode(image);
        var (mean, logvar) = current.Encode(image);
        Assert.True(Identical(oldMean, mean));
        Assert.True(Identical(oldLogvar, logvar));
        Assert.True(Identical(old.Decode(latent), current.Decode(latent)));
    }

    [Fact]
    public void A_half_precision_weight_file_loads_upcast_to_float32()
    {
        using var temp = Fixtures.Temp();
        string halfFile = ModelFolder.WeightsStem + ".fp16.safetensors";
        WriteVaeFolder(temp, weights => weights.ToDictionary(kv => kv.Key, kv => kv.Value.to_type(ScalarType.Float16), StringComparer.Ordinal), halfFile);
        Assert.False(File.Exists(temp.File(ModelFolder.Weights)));

        using var model = AutoencoderKL.Load(temp.Path);
        using var half = SafetensorsFile.Open(temp.File(halfFile));
        using var scope = NewDisposeScope();
        var state = model.state_dict();
        Assert.Equal(half.Entries.Count, state.Count);
        foreach (var (key, value) in state)
        {
            Assert.Equal(SafetensorsDType.F16, half.Entries[key].DType);
            Assert.Equal(ScalarType.Float32, value.dtype);
            Assert.True(Identical(value, half.Read(key).to_type(ScalarType.Float32)), key);
        }
    }

    [Fact]
    public void A_pipeline_folder_loads_its_vae_subfolder()
    {
        using var model = AutoencoderKL.Load(Fixtures.Diffusers("sd-pipeline-small", "pipeline"));
        Assert.Equal(new[] { 32, 64 }, model.Config.BlockOutChannels);
        Assert.Equal(4, model.Config.LatentChannels);
    }

    [Fact]
    public void Without_quant_convs_or_mid_attention_the_model_has_no_such_weights_and_keeps_its_shapes()
    {
        var config = AutoencoderKLConfig.FromJson(ConfigJson.Load(Path.Combine(VaeFolder, "config.json"))) with
        {
            UseQuantConv = false, UsePostQuantConv = false, MidBlockAddAttention = false,
        };
        using var model = new AutoencoderKL(config);
        var keys = model.state_dict().Keys.ToList();
        Assert.DoesNotContain(keys, k => k.StartsWith("quant_conv.") || k.StartsWith("post_quant_conv.") || k.Contains(".attentions."));
        Assert.Contains("encoder.mid_block.resnets.1.conv2.weight", keys);

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var (mean, logvar) = model.Encode(randn(1, 3, 32, 32));
        Assert.Equal(new long[] { 1, 4, 16, 16 }, mean.shape);
        Assert.Equal(new long[] { 1, 4, 16, 16 }, logvar.shape);
        Assert.Equal(new long[] { 1, 3, 32, 32 }, model.Decode(mean).shape);
    }

    [Fact]
    public void Inputs_with_the_wrong_channel_count_are_refused_with_the_expected_shape()
    {
        using var model = AutoencoderKL.Load(VaeFolder);
        using var scope = NewDisposeScope();
        var error = Assert.Throws<ArgumentException>(() => model.Encode(zeros(1, 4, 32, 32)));
        Assert.Contains("[batch, 3, height, width]", error.Message);
        error = Assert.Throws<ArgumentException>(() => model.Decode(zeros(1, 3, 16, 16)));
        Assert.Contains("[batch, 4, height, width]", error.Message);
    }
}
