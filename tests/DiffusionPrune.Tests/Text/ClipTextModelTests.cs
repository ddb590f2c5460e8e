using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.TextEncoding;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Text;

/// <summary>
/// The CLIP text encoder against clip-text-small, whose last_hidden_state OpenAI's own model.py computed from the
/// fixture prompts (saved under Hugging Face's names); config validation and strict loading.
/// </summary>
public class ClipTextModelTests
{
    private static string EncoderFolder => Fixtures.Diffusers("clip-text-small", "pipeline", "text_encoder");

    /// <summary>The fixture prompts through our tokenizer, as one [prompts, 77] batch.</summary>
    private static Tensor TokenizedPrompts()
    {
        var (prompts, _) = ClipTokenizerTests.Case();
        var ids = prompts.SelectMany(p => ClipTokenizerTests.Shared.Value.EncodeForModel(p).InputIds).ToArray();
        return tensor(ids, [prompts.Length, 77]);
    }

    [Fact]
    public void Last_hidden_state_of_the_tokenized_fixture_prompts_matches_the_reference()
    {
        using var model = CLIPTextModel.Load(EncoderFolder);
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("clip-text-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var inputIds = TokenizedPrompts();
        var referenceIds = io.Read("input_ids");
        Assert.Equal(referenceIds.shape, inputIds.shape);
        Assert.True(inputIds.eq(referenceIds).all().item<bool>(), "our tokenizer's input_ids differ from the fixture's");

        var lastHiddenState = model.call(inputIds);
        var reference = io.ReadFloat("last_hidden_state");
        Assert.Equal(reference.shape, lastHiddenState.shape);
        double error = Fixtures.RelativeError(lastHiddenState, reference);
        Assert.True(error <= 1e-4, $"error {error}");
    }

    [Fact]
    public void The_state_at_the_end_token_matches_the_reference_pooled_output()
    {
        using var model = CLIPTextModel.Load(EncoderFolder);
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("clip-text-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var inputIds = TokenizedPrompts();
        var lastHiddenState = model.call(inputIds);
        // CLIP pools at the first position of the highest id, the end token (argmax returns the first maximum).
        var eos = inputIds.argmax(1);
        var pooled = lastHiddenState[arange(inputIds.shape[0]), eos];
        double error = Fixtures.RelativeError(pooled, io.ReadFloat("pooled_eos"));
        Assert.True(error <= 1e-4, $"error {error}");
    }

    [Fact]
    public void Padding_after_a_prompt_leaves_its_states_unchanged_because_attention_is_causal()
    {
        using var model = CLIPTextModel.Load(EncoderFolder);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var tokenizer = ClipTokenizerTests.Shared.Value;
        var full = model.call(tensor(tokenizer.EncodeForModel("a photograph of an astronaut riding a horse").InputIds, [1, 77]));
        var shortIds = tokenizer.EncodeForModel("a photograph of an astronaut riding a horse", maxLength: 10).InputIds; // 8 ids + start + end
        var alone = model.call(tensor(shortIds, [1, 10]));
        Assert.True(Fixtures.RelativeError(alone, full[.., ..10]) <= 1e-5);
        // and a different later token does change the states after it
        var changed = (long[])shortIds.Clone();
        changed[9] = tokenizer.Encode("cat")[0];
        var other = model.call(tensor(changed, [1, 10]));
        Assert.True(Fixtures.RelativeError(other[.., ..9], alone[.., ..9]) <= 1e-6);
        Assert.True(Fixtures.RelativeError(other[.., 9], alone[.., 9]) > 1e-3);
    }

    [Fact]
    public void The_fixture_config_is_read_with_every_field()
    {
        var config = CLIPTextConfig.FromJson(ConfigJson.Load(Path.Combine(EncoderFolder, "config.json")));
        Assert.Equal(new CLIPTextConfig
        {
            VocabSize = 49408, HiddenSize = 32, IntermediateSize = 128, NumAttentionHeads = 4, NumHiddenLayers = 2,
            MaxPositionEmbeddings = 77, HiddenAct = "quick_gelu", LayerNormEps = 1e-5,
        }, config);
    }

    [Fact]
    public void A_pipeline_folder_loads_its_text_encoder_subfolder()
    {
        using var model = CLIPTextModel.Load(Fixtures.Diffusers("sd-pipeline-small", "pipeline"));
        Assert.Equal(32, model.Config.HiddenSize);
        Assert.Equal(2, model.Config.NumHiddenLayers);
    }

    [Theory]
    [InlineData("hidden_act", "\"relu\"", "hidden_act 'relu' is not supported")]
    [InlineData("hidden_act", "\"gelu_new\"", "hidden_act 'gelu_new'")]
    [InlineData("num_attention_heads", "5", "not divisible by num_attention_heads 5")]
    [InlineData("num_hidden_layers", "0", "num_hidden_layers must be at least 1")]
    [InlineData("hidden_size", "-32", "hidden_size must be at least 1")]
    [InlineData("max_position_embeddings", "76.5", "'max_position_embeddings' must be a whole number")]
    [InlineData("layer_norm_eps", "0", "layer_norm_eps must be a positive number")]
    [InlineData("vocab_size", "\"many\"", "'vocab_size' has the wrong type")]
    [InlineData("model_type", "\"clip_vision_model\"", "not a CLIP text encoder")]
    [InlineData("architectures", "[\"CLIPTextModelWithProjection\"]", "CLIPTextModelWithProjection")]
    public void Unknown_or_inconsistent_config_values_are_refused_with_what_was_wrong(string key, string json, string message)
    {
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(EncoderFolder, "config.json")))!.AsObject();
        root[key] = JsonNode.Parse(json);
        var error = Assert.Throws<ModelFormatException>(() => CLIPTextConfig.FromJson(new ConfigJson(root, "text_encoder/config.json")));
        Assert.Contains(message, error.Message);
        Assert.Contains("text_encoder/config.json", error.Message);
    }

    [Fact]
    public void A_whole_clip_model_config_is_refused_with_what_to_give_instead()
    {
        var error = Assert.Throws<ModelFormatException>(() => CLIPTextConfig.FromJson(ConfigJson.Parse("""{"text_config": {}, "vision_config": {}}""")));
        Assert.Contains("text_encoder/", error.Message);
    }

    [Fact]
    public void Weights_that_do_not_match_the_config_are_refused_naming_the_tensor()
    {
        using var temp = Fixtures.Temp();
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(EncoderFolder, "config.json")))!.AsObject();
        root["intermediate_size"] = 64;
        File.WriteAllText(temp.File("config.json"), root.ToJsonString());
        File.Copy(Path.Combine(EncoderFolder, CLIPTextModel.WeightsFile), temp.File(CLIPTextModel.WeightsFile));
        var error = Assert.Throws<ModelFormatException>(() => CLIPTextModel.Load(temp.Path));
        Assert.Contains("mlp.fc1", error.Message);

        root["intermediate_size"] = 128;
        root["num_hidden_layers"] = 3;
        File.WriteAllText(temp.File("config.json"), root.ToJsonString());
        error = Assert.Throws<ModelFormatException>(() => CLIPTextModel.Load(temp.Path));
        Assert.Contains("text_model.encoder.layers.2.", error.Message);
    }

    [Fact]
    public void A_folder_without_weights_is_refused_with_the_file_it_needs()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(EncoderFolder, "config.json"), temp.File("config.json"));
        var error = Assert.Throws<ModelFormatException>(() => CLIPTextModel.Load(temp.Path));
        Assert.Contains(CLIPTextModel.WeightsFile, error.Message);
    }

    [Fact]
    public void The_position_ids_buffer_older_checkpoints_saved_is_ignored()
    {
        using var temp = Fixtures.Temp();
        File.Copy(Path.Combine(EncoderFolder, "config.json"), temp.File("config.json"));
        var weights = DiffusersModelLoader.ReadSafetensors(Path.Combine(EncoderFolder, CLIPTextModel.WeightsFile));
        weights["text_model.embeddings.position_ids"] = arange(77L, dtype: ScalarType.Int64).unsqueeze(0);
        SafetensorsWriter.Write(temp.File(CLIPTextModel.WeightsFile), weights);
        foreach (var t in weights.Values) t.Dispose();

        using var withBuffer = CLIPTextModel.Load(temp.Path);
        using var original = CLIPTextModel.Load(EncoderFolder);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var ids = TokenizedPrompts();
        Assert.True(withBuffer.call(ids).eq(original.call(ids)).all().item<bool>());
    }

    [Fact]
    public void A_prompt_longer_than_the_position_table_is_refused()
    {
        using var model = CLIPTextModel.Load(EncoderFolder);
        using var ids = zeros([1, 78], ScalarType.Int64);
        var error = Assert.Throws<ArgumentException>(() => model.call(ids));
        Assert.Contains("77", error.Message);
    }

    [Fact]
    public void The_gelu_activation_is_the_exact_erf_form_and_quick_gelu_the_sigmoid_form()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = linspace(-4, 4, 33).view(1, 1, 33);
        foreach (var (act, reference) in new (string, Func<Tensor, Tensor>)[]
                 {
                     ("gelu", h => 0.5 * h * (1 + special.erf(h / Math.Sqrt(2)))),
                     ("quick_gelu", h => h * sigmoid(1.702 * h)),
                 })
        {
            var config = new CLIPTextConfig { HiddenSize = 33, IntermediateSize = 33, NumAttentionHeads = 1, NumHiddenLayers = 1, HiddenAct = act };
            using var mlp = new CLIPMLP(config);
            // Identity projections isolate the activation.
            foreach (var (name, p) in mlp.named_parameters())
                if (name.EndsWith("weight")) p.copy_(eye(33)); else p.zero_();
            Assert.True(Fixtures.RelativeError(mlp.call(x), reference(x)) <= 1e-6, act);
        }
    }
}
