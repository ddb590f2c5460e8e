using System.Text.Json.Nodes;
using DiffusionPrune.Export;
using DiffusionPrune.Models;
using DiffusionPrune.OnnxGraphs;
using DiffusionPrune.Pruning;
using DiffusionPrune.TextEncoding;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using Xunit.Abstractions;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.Tests.Export;

/// <summary>
/// The three graphs of an ONNX Stable Diffusion pipeline (U-Net, VAE decoder, CLIP text encoder), run by ONNX Runtime,
/// compute what the TorchSharp modules compute: the sd-pipeline-small fixture's weights, pruned U-Nets and the U-Net
/// options the fixture does not use. Tolerance: max |onnx - torch| &lt;= 1e-4 * max(1, max |torch|).
/// </summary>
public class StableDiffusionOnnxParityTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-4;
    private static string PipelineFixture => Fixtures.Diffusers("sd-pipeline-small", "pipeline");

    /// <summary>Writes <paramref name="model"/>, runs it on the named inputs (float32, int32 or int64 tensors) and returns its first output.</summary>
    internal static Tensor RunOnnx(ModelProto model, params (string Name, Tensor Value)[] inputs)
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("model.onnx");
        OnnxModelWriter.Write(model, path);
        using var options = new SessionOptions { IntraOpNumThreads = 1, InterOpNumThreads = 1 };
        using var session = new InferenceSession(path, options);
        var values = inputs.Select(i => i.Value.dtype switch
        {
            ScalarType.Int64 => OrtValue.CreateTensorValueFromMemory(i.Value.contiguous().data<long>().ToArray(), i.Value.shape),
            ScalarType.Int32 => OrtValue.CreateTensorValueFromMemory(i.Value.contiguous().data<int>().ToArray(), i.Value.shape),
            _ => OrtValue.CreateTensorValueFromMemory(i.Value.to_type(ScalarType.Float32).contiguous().data<float>().ToArray(), i.Value.shape),
        }).ToList();
        try
        {
            using var runOptions = new RunOptions();
            using var outputs = session.Run(runOptions, inputs.Select(i => i.Name).ToArray(), values, [session.OutputNames[0]]);
            return tensor(outputs[0].GetTensorDataAsSpan<float>().ToArray(), outputs[0].GetTensorTypeAndShape().Shape);
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    /// <summary>The U-Net at batch 1 and 2, at the config's latent size and at a non-square one, against <see cref="DiffusionModel.Forward"/>.</summary>
    private double UNetError(UNet2DConditionModel model, long seed)
    {
        model.eval();
        var onnx = OnnxExporter.Export(model);
        double worst = 0;
        foreach (var (batch, height, width, tokens) in new[] { (1, 16, 16, 77), (2, 8, 24, 5) })
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var generator = new Generator((ulong)(seed + batch));
            var sample = randn([batch, model.InChannels, height, width], generator: generator);
            var text = randn([batch, tokens, model.Config.CrossAttentionDim[^1]], generator: generator);
            var timesteps = tensor(new long[] { 999, 17 }.Take(batch).ToArray());
            if (batch == 2) timesteps = tensor(new[] { 980.5f, 17.25f }); // fractional, as Euler schedulers step
            var expected = model.Forward(sample, new Conditioning(timesteps, EncoderHiddenStates: text));
            var actual = RunOnnx(onnx, ("sample", sample), ("timestep", timesteps.to_type(ScalarType.Float32)), (UNet2DConditionOnnx.EncoderHiddenStatesInput, text));
            Assert.Equal(expected.shape, actual.shape);
            worst = Math.Max(worst, Fixtures.RelativeError(actual, expected));
        }
        return worst;
    }

    private void AssertUNetParity(UNet2DConditionModel model, string name, long seed = 0)
    {
        double error = UNetError(model, seed);
        output.WriteLine($"{name}: {model.ParameterCount():N0} parameters, max relative error {error:E2}");
        Assert.True(error <= Tolerance, $"{name}: ONNX vs TorchSharp relative error {error:E3} > {Tolerance}");
    }

    /// <summary>A random U-Net of the fixture's shape with config changes; every weight (norms included) perturbed so each matters.</summary>
    private static UNet2DConditionModel TinyUNet(int seed, params (string Key, string Json)[] changes)
    {
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(PipelineFixture, "unet", "config.json")))!.AsObject();
        foreach (var (key, json) in changes) root[key] = JsonNode.Parse(json);
        var model = new UNet2DConditionModel(UNet2DConditionConfig.FromJson(new ConfigJson(root, "unet/config.json")));
        var generator = new Generator((ulong)seed);
        using (no_grad())
            foreach (var p in model.parameters())
                p.add_(randn(p.shape, generator: generator) * 0.1f);
        model.eval();
        return model;
    }

    [Fact]
    public void Stable_diffusion_unet_fixture_exports_with_cross_attention_and_dynamic_sizes()
    {
        using var model = UNet2DConditionModel.Load(PipelineFixture);
        AssertUNetParity(model, "sd-pipeline-small unet");
    }

    [Fact]
    public void Unet_with_linear_projections_post_activations_and_two_transformer_layers_exports()
    {
        using var model = TinyUNet(3, ("use_linear_projection", "true"), ("timestep_post_act", "\"silu\""), ("time_embedding_act_fn", "\"silu\""),
            ("transformer_layers_per_block", "2"), ("act_fn", "\"mish\""));
        AssertUNetParity(model, "linear projections, timestep_post_act, time_embedding_act_fn, 2 layers, mish");
    }

    [Fact]
    public void Unet_with_only_cross_attention_and_a_resnet_mid_block_exports()
    {
        using var model = TinyUNet(4, ("only_cross_attention", "true"), ("mid_block_type", "\"UNetMidBlock2D\""), ("resnet_time_scale_shift", "\"scale_shift\""));
        AssertUNetParity(model, "only_cross_attention, UNetMidBlock2D, scale_shift");
    }

    [Fact]
    public void Pruned_unet_with_a_removed_transformer_and_resnet_exports_at_its_smaller_size()
    {
        using var model = UNet2DConditionModel.Load(PipelineFixture);
        var groups = PrunableGroups.Of(model);
        string transformer = groups.Layers.First(l => l.Kind == LayerKind.TransformerBlock).Path;
        string resnet = groups.Layers.First(l => l.Kind == LayerKind.ResnetBlock).Path;
        using var pruned = (UNet2DConditionModel)StructuralSurgery.Apply(model, RandomPlan(groups, 7, transformer, resnet));
        Assert.Contains(transformer, pruned.Structure.RemovedLayers);
        Assert.Contains(resnet, pruned.Structure.RemovedLayers);
        Assert.NotEmpty(pruned.Structure.AttentionHeads);
        Assert.NotEmpty(pruned.Structure.FeedForwardInner);
        Assert.True(pruned.ParameterCount() < model.ParameterCount());
        AssertUNetParity(pruned, $"sd-pipeline-small unet without {transformer} and {resnet}, random widths", seed: 5);
    }

    [Fact]
    public void Class_conditional_unet_is_refused_with_the_reason()
    {
        using var model = TinyUNet(5, ("class_embed_type", "\"timestep\""));
        var error = Assert.Throws<OnnxExportException>(() => OnnxExporter.Export(model));
        Assert.Contains("class embedding", error.Message);
    }

    [Fact]
    public void Vae_decoder_export_matches_decode_including_post_quant_conv()
    {
        using var vae = AutoencoderKL.Load(PipelineFixture);
        Assert.NotNull(vae.PostQuantConv);
        var onnx = OnnxExporter.ExportVaeDecoder(vae);
        double worst = 0;
        foreach (var (batch, height, width) in new[] { (1, 16, 16), (2, 8, 12) })
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var latent = randn([batch, vae.Config.LatentChannels, height, width], generator: new Generator((ulong)batch));
            var expected = vae.Decode(latent);
            var actual = RunOnnx(onnx, (AutoencoderKLOnnx.LatentInput, latent));
            Assert.Equal(expected.shape, actual.shape);
            worst = Math.Max(worst, Fixtures.RelativeError(actual, expected));
        }
        output.WriteLine($"vae decoder: max relative error {worst:E2}");
        Assert.True(worst <= Tolerance, $"vae decoder: relative error {worst:E3}");
    }

    [Theory]
    [InlineData(DataType.Int32)]
    [InlineData(DataType.Int64)]
    public void Clip_text_encoder_export_matches_with_its_causal_mask_at_full_and_short_lengths(DataType idType)
    {
        using var encoder = CLIPTextModel.Load(PipelineFixture);
        var onnx = OnnxExporter.ExportTextEncoder(encoder, idType);
        double worst = 0;
        foreach (var (batch, length) in new[] { (2, encoder.Config.MaxPositionEmbeddings), (1, 6) })
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var ids = randint(0, encoder.Config.VocabSize, [batch, length], generator: new Generator((ulong)length), dtype: ScalarType.Int64);
            var expected = encoder.call(ids);
            var actual = RunOnnx(onnx, (CLIPTextOnnx.InputIds, idType == DataType.Int32 ? ids.to_type(ScalarType.Int32) : ids));
            Assert.Equal(expected.shape, actual.shape);
            worst = Math.Max(worst, Fixtures.RelativeError(actual, expected));
        }
        output.WriteLine($"clip text encoder ({idType}): max relative error {worst:E2}");
        Assert.True(worst <= Tolerance, $"clip text encoder: relative error {worst:E3}");
    }
}
