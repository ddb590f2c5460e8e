using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.OnnxGraphs;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Importance;
using Xunit.Abstractions;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace DiffusionPrune.Tests.Export;

/// <summary>
/// The exported graph, run by ONNX Runtime, computes what our TorchSharp Forward computes — for the diffusers
/// fixtures, pruned models and every config option the loader accepts — at batch 1 and 3 from one file.
/// Tolerance: max |onnx - torch| <= 1e-4 * max(1, max |torch|).
/// </summary>
public class OnnxParityTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-4;

    private void AssertParity(DiffusionModel model, string name, long seed = 0, Func<int, Tensor>? classLabels = null, long[]? timesteps = null)
    {
        double error = OnnxTestRunner.ExportAndCompare(model, seed, classLabels, timesteps);
        output.WriteLine($"{name}: {model.ParameterCount():N0} parameters, max relative error {error:E2}");
        Assert.True(error <= Tolerance, $"{name}: ONNX vs TorchSharp relative error {error:E3} > {Tolerance}");
    }

    [Fact]
    public void UNet2D_fixture_export_matches_torchsharp_and_diffusers()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        AssertParity(model, "unet2d-small");

        // The same file against the outputs diffusers itself computed (batch 4, timesteps 0 / 10 / 500 / 999).
        using var temp = Fixtures.Temp();
        OnnxExporter.Write(model, temp.File("model.onnx"));
        using var runner = new OnnxTestRunner(temp.File("model.onnx"));
        using var io = DiffusionPrune.Formats.SafetensorsFile.Open(Fixtures.Diffusers("unet2d-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        double error = Fixtures.RelativeError(runner.Run(io.ReadFloat("sample"), io.Read("timestep")), io.ReadFloat("output"));
        output.WriteLine($"unet2d-small vs diffusers: {error:E2}");
        Assert.True(error <= Tolerance, $"error {error:E3}");
    }

    [Fact]
    public void DiT_fixture_export_matches_torchsharp_and_diffusers_with_learned_sigma_and_null_class()
    {
        using var model = ModelFamilies.Load(DiTFixture);
        Assert.True(model.LearnedSigma);
        AssertParity(model, "dit-small");

        using var temp = Fixtures.Temp();
        OnnxExporter.Write(model, temp.File("model.onnx"));
        using var runner = new OnnxTestRunner(temp.File("model.onnx"));
        using var io = DiffusionPrune.Formats.SafetensorsFile.Open(Fixtures.Diffusers("dit-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        var actual = runner.Run(io.ReadFloat("sample"), io.Read("timestep"), io.Read("class_labels"));
        Assert.Equal(new long[] { 4, 8, 16, 16 }, actual.shape);
        double error = Fixtures.RelativeError(actual, io.ReadFloat("output"));
        output.WriteLine($"dit-small vs diffusers: {error:E2}");
        Assert.True(error <= Tolerance, $"error {error:E3}");
    }

    [Fact]
    public void Default_unet_pruned_by_magnitude_at_20_percent_exports_at_its_smaller_size()
    {
        string folder = Path.Combine(Fixtures.RepoRoot, "samples", "models", "mnist-unet");
        using var model = ModelFamilies.Load(folder);
        var groups = PrunableGroups.Of(model);
        var context = new ImportanceContext(Path.Combine(folder, "scheduler_config.json"), Steps: 2, CalibrationSamples: 2, Seed: 0, Device: CPU);
        var scores = ImportanceCriteria.Create("magnitude").Score(model, groups, context);
        var selection = PlanSelector.Select(groups, scores, 0.2);
        groups.ClearMasks();
        using var pruned = StructuralSurgery.Apply(model, selection.Plan);
        Assert.False(pruned.Structure.IsEmpty);
        Assert.True(pruned.ParameterCount() < 0.81 * model.ParameterCount());

        AssertParity(model, "mnist-unet");
        AssertParity(pruned, "mnist-unet magnitude 20%", seed: 1);
    }

    [Fact]
    public void UNet_with_removed_layers_and_narrowed_blocks_exports()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var groups = PrunableGroups.Of(model);
        string resnet = groups.Layers.First(l => l.Kind == LayerKind.ResnetBlock).Path;
        string attention = groups.Layers.First(l => l.Kind == LayerKind.AttentionBlock).Path;
        using var pruned = StructuralSurgery.Apply(model, RandomPlan(groups, 11, resnet, attention));
        Assert.Contains(resnet, pruned.Structure.RemovedLayers);
        Assert.Contains(attention, pruned.Structure.RemovedLayers);
        AssertParity(pruned, $"unet2d-small without {resnet} and {attention}, random widths", seed: 2);
    }

    [Theory]
    [InlineData("transformer_blocks.0")] // the output layer still reads block 0's conditioning embedding
    [InlineData("transformer_blocks.1")]
    public void DiT_with_a_removed_block_and_fewer_heads_and_neurons_exports(string removed)
    {
        using var model = ModelFamilies.Load(DiTFixture);
        var groups = PrunableGroups.Of(model);
        using var pruned = StructuralSurgery.Apply(model, RandomPlan(groups, 5, removed));
        Assert.Contains(removed, pruned.Structure.RemovedLayers);
        Assert.NotEmpty(pruned.Structure.AttentionHeads);
        Assert.NotEmpty(pruned.Structure.FeedForwardInner);
        AssertParity(pruned, $"dit-small without {removed}, random heads/neurons", seed: 3);
    }

    [Fact]
    public void ScaleShift_unet_with_resnet_resamplers_exports_unpruned_and_pruned()
    {
        using var model = TinyScaleShiftUNet(seed: 4);
        AssertParity(model, "tiny scale_shift U-Net");
        using var pruned = StructuralSurgery.Apply(model, RandomPlan(PrunableGroups.Of(model), 6));
        AssertParity(pruned, "tiny scale_shift U-Net, random widths", seed: 1);
    }

    /// <summary>Config options beyond the fixtures, each on a tiny random U-Net (norm weights perturbed so they matter).</summary>
    [Theory]
    [InlineData("fourier", """
        "time_embedding_type": "fourier", "act_fn": "mish", "center_input_sample": true, "downsample_padding": 0,
        "mid_block_scale_factor": 1.41421, "attn_norm_num_groups": 2
        """)]
    [InlineData("learned", """
        "time_embedding_type": "learned", "num_train_timesteps": 1000, "num_class_embeds": 10, "act_fn": "gelu",
        "resnet_time_scale_shift": "scale_shift", "add_attention": false, "time_embedding_dim": 24
        """)]
    [InlineData("class-timestep", """
        "class_embed_type": "timestep", "act_fn": "relu", "flip_sin_to_cos": false, "freq_shift": 1, "mid_block_type": null,
        "attention_head_dim": null, "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D"], "downsample_type": "resnet", "upsample_type": "resnet"
        """)]
    [InlineData("class-identity", """
        "class_embed_type": "identity", "act_fn": "swish", "norm_eps": 1e-6, "downsample_type": "resnet", "upsample_type": "resnet",
        "time_embedding_dim": 32
        """)]
    public void UNet_config_options_export(string name, string options)
    {
        var config = System.Text.Json.Nodes.JsonNode.Parse("""
            {"_class_name": "UNet2DModel", "sample_size": 16, "in_channels": 2, "out_channels": 3,
             "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 4,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
            """)!.AsObject();
        foreach (var (key, value) in System.Text.Json.Nodes.JsonNode.Parse("{" + options + "}")!.AsObject())
            config[key] = value?.DeepClone();
        manual_seed(7);
        using var model = (UNet2DModel)ModelFamilies.Create(ConfigJson.Parse(config.ToJsonString()));
        PerturbNorms(model);
        Func<int, Tensor>? labels = model.Config.ClassEmbedType switch
        {
            "identity" => batch => randn([batch, model.Config.TimeEmbedDim], generator: new Generator(9)),
            "timestep" => batch => tensor(Enumerable.Range(0, batch).Select(i => 3L + 40 * i).ToArray()),
            _ => null,
        };
        // log(0) is -inf: Fourier features need positive timesteps (diffusers uses them with continuous sigmas).
        long[]? timesteps = model.Config.TimeEmbeddingType == "fourier" ? [1, 17, 500, 999] : null;
        AssertParity(model, $"tiny U-Net ({name})", classLabels: labels, timesteps: timesteps);
    }

    [Fact]
    public void DiT_config_options_export_exact_gelu_affine_norm_no_attention_bias()
    {
        manual_seed(8);
        using var model = new DiTTransformer2DModel(new DiTConfig
        {
            NumAttentionHeads = 2,
            AttentionHeadDim = 8,
            InChannels = 3,
            NumLayers = 2,
            SampleSize = 8,
            PatchSize = 2,
            NumEmbedsAdaNorm = 5,
            ActivationFn = "gelu",
            NormElementwiseAffine = true,
            AttentionBias = false,
            NormEps = 1e-6,
        });
        PerturbNorms(model);
        Assert.False(model.LearnedSigma);
        AssertParity(model, "tiny DiT (gelu, affine norm3, no attention bias)");
        using var pruned = StructuralSurgery.Apply(model, RandomPlan(PrunableGroups.Of(model), 2, "transformer_blocks.1"));
        AssertParity(pruned, "tiny DiT, block 1 removed, random heads/neurons", seed: 4);
    }

    [Fact]
    public void The_graph_declares_opset_17_the_contract_inputs_and_a_dynamic_batch()
    {
        using var model = ModelFamilies.Load(DiTFixture);
        var proto = OnnxExporter.Export(model);
        Assert.Equal(17, proto.OpsetImport.Single(o => o.Domain == "").Version);
        Assert.Equal(new[] { "sample", "timestep", "class_labels" }, proto.Graph.Input.Select(i => i.Name));
        Assert.Equal("out_sample", proto.Graph.Output.Single().Name);
        Assert.All(proto.Graph.Input.Concat(proto.Graph.Output), v => Assert.Equal("batch", v.Type.TensorType.Shape.Dim[0].DimParam));
        Assert.Equal((int)DataType.Int64, proto.Graph.Input[1].Type.TensorType.ElemType);
        // every weight is an initializer: no parameter is missing from the graph
        long initialized = proto.Graph.Initializer.Where(t => !t.Name.StartsWith("const/")).Sum(t => t.Dims.Aggregate(1L, (a, b) => a * b));
        Assert.True(initialized >= model.ParameterCount(), $"{initialized} initializer values < {model.ParameterCount()} parameters");
        string[] ops17 = ["Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Conv", "Reshape", "Shape", "Transpose", "Unsqueeze", "Concat", "Split",
            "Sigmoid", "Tanh", "Softplus", "Erf", "Relu", "Softmax", "Sin", "Cos", "Log", "Gather", "Cast", "Pad", "Identity",
            "InstanceNormalization", "LayerNormalization", "AveragePool", "Resize"];
        Assert.All(proto.Graph.Node, n => Assert.Contains(n.OpType, ops17));
    }

    [Fact]
    public void A_model_over_the_size_limit_is_a_clear_error()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var e = Assert.Throws<OnnxExportException>(() => OnnxExporter.Export(model, maxModelBytes: 70L << 20));
        Assert.Contains("2 GB", e.Message);
    }

    [Fact]
    public void A_masked_model_is_refused_rather_than_exported_without_its_gates()
    {
        using var model = ModelFamilies.Load(DiTFixture);
        var groups = PrunableGroups.Of(model);
        using var masked = MaskedModel.Apply(model, RandomPlan(groups, 1));
        var e = Assert.Throws<OnnxExportException>(() => OnnxExporter.Export(model));
        Assert.Contains("gates", e.Message);
    }

    private static void PerturbNorms(DiffusionModel model)
    {
        using (no_grad())
            foreach (var (name, p) in model.named_parameters())
                if (name.Contains("norm")) p.add_(randn(p.shape) * 0.1);
        model.eval();
    }
}
