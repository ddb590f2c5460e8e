using DiffusionPrune.Analysis;
using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using DiffusionPrune.Schedulers;
using TorchSharp;
using Xunit.Abstractions;
using static DiffusionPrune.Tests.Pruning.PruningTestSupport;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Inference.Onnx;

/// <summary>
/// The exporter and the ONNX Runtime backend together: a bundle written by <see cref="ModelExporter"/> samples the
/// same images as the TorchSharp model it came from — same noise, same DDIM scheduler, same guidance, through
/// <see cref="DiffusionSampler"/> with <see cref="OnnxDenoiser"/> (and through the demo's <see cref="ArrayDiffusionSampler"/>).
/// Tolerance (issue 5: "the same images up to float error"): max |onnx − torch| ≤ 1e-3 · max(1, max |torch|) on the final latents.
/// </summary>
public class ExportedBundleParityTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-3;
    private const int Steps = 4;

    internal static string MnistUNet => Path.Combine(Fixtures.RepoRoot, "samples", "models", "mnist-unet");

    internal static string Export(string modelFolder, string bundle, params ExportFormat[] formats)
    {
        ModelExporter.Export(new ExportRequest { ModelPath = modelFolder, OutputPath = bundle, Formats = formats.Length > 0 ? formats : [ExportFormat.Onnx] });
        return bundle;
    }

    /// <summary>Samples <paramref name="model"/> and the bundle from one noise with the bundle's scheduler config as DDIM; returns the relative error.</summary>
    private double SampleBoth(DiffusionModel model, string bundle, string name, long[]? labels = null, double guidance = 1.0, int batch = 2)
    {
        using var denoiser = OnnxDenoiser.Open(bundle, "cpu");
        using var scheduler = Scheduler.FromFile(Path.Combine(bundle, ModelFolder.SchedulerConfig), "ddim");
        using var scope = NewDisposeScope();
        model.eval();
        var noise = randn([batch, model.InChannels, model.SampleSize[0], model.SampleSize[1]], generator: new Generator(42));
        Tensor? classLabels = labels is null ? null : tensor(labels);
        var options = new SampleOptions(Steps, guidance, KeepTrajectory: true);

        var expected = DiffusionSampler.Sample(model, scheduler, noise, classLabels, options);
        SampleResult actual;
        using (no_grad())
            actual = DiffusionSampler.Sample(denoiser.Denoise, denoiser.Model.NullClass, scheduler.CloneFresh(), noise, classLabels, options);

        Assert.Equal(expected.Final.shape, actual.Final.shape);
        double error = Fixtures.RelativeError(actual.Final, expected.Final);
        // The final x_0 is clipped to [-1, 1] (clip_sample); the latents before it are not, so compare them too.
        double trajectoryError = Fixtures.RelativeError(actual.Trajectory!, expected.Trajectory!);
        output.WriteLine($"{name}: {model.ParameterCount():N0} parameters, DDIM {Steps} steps, batch {batch}" +
            (guidance != 1.0 ? $", guidance {guidance}" : "") + $": final latents max |onnx - torch| / max(1, max |torch|) = {error:E2}, " +
            $"whole trajectory {trajectoryError:E2}");
        Assert.True(error <= Tolerance, $"{name}: ONNX vs torch final latents differ by {error:E3} > {Tolerance}");
        Assert.True(trajectoryError <= Tolerance, $"{name}: ONNX vs torch trajectories differ by {trajectoryError:E3} > {Tolerance}");
        return error;
    }

    [Fact]
    public void The_exported_metadata_reads_back_as_the_model_it_describes()
    {
        using var temp = Fixtures.Temp();
        foreach (var (folder, name) in new[] { (DiTFixture, "dit"), (UNetFixture, "unet") })
        {
            string bundle = Export(folder, temp.File(name));
            using var model = ModelFamilies.Load(folder);
            var info = OnnxModelInfo.Load(Path.Combine(bundle, ModelFolder.OnnxInfo));
            Assert.Equal(model.ClassName, info.ClassName);
            Assert.Equal(OnnxContract.InputNames(model), info.InputNames);
            Assert.Equal([OnnxContract.Output], info.Outputs.Select(o => o.Name));
            Assert.Equal(model.SampleSize, info.SampleSize);
            Assert.Equal((model.InChannels, model.OutChannels, model.LearnedSigma), (info.InChannels, info.OutChannels, info.LearnedSigma));
            Assert.Equal((model.NumClasses, model.NullClass), (info.NumClasses, info.NullClass));
            Assert.Equal(model.ParameterCount(), info.Parameters);
            // the ONNX-only bundle (no config.json) runs under the model's own name, with the model's shape and cost
            using var onnx = InferenceModel.Load(bundle, "onnx", CPU, "cpu");
            Assert.Equal(model.ClassName, onnx.ClassName);
            Assert.Equal((model.NumClasses, model.NullClass, model.InChannels), (onnx.NumClasses, onnx.NullClass, onnx.InChannels));
            Assert.Equal(ModelCost.Measure(model).Macs, onnx.Cost().Macs);
        }
    }

    [Fact]
    public void DiT_fixture_bundle_samples_what_torch_samples_with_guidance_and_learned_sigma()
    {
        using var temp = Fixtures.Temp();
        string bundle = Export(DiTFixture, temp.File("dit"));
        using var model = ModelFamilies.Load(DiTFixture);
        Assert.True(model.LearnedSigma);
        SampleBoth(model, bundle, "dit-small (CFG)", labels: [1, 7], guidance: 4.0);
        SampleBoth(model, bundle, "dit-small (null class, no guidance)", labels: [3, 10]);
    }

    [Fact]
    public void UNet_fixture_bundle_samples_what_torch_samples()
    {
        using var temp = Fixtures.Temp();
        string bundle = Export(UNetFixture, temp.File("unet"));
        using var model = ModelFamilies.Load(UNetFixture);
        SampleBoth(model, bundle, "unet2d-small");
    }

    [Fact]
    public void Default_mnist_unet_and_its_magnitude_20_percent_prune_sample_what_torch_samples()
    {
        using var temp = Fixtures.Temp();
        string bundle = Export(MnistUNet, temp.File("mnist-unet"));
        using (var model = ModelFamilies.Load(MnistUNet))
            SampleBoth(model, bundle, "mnist-unet");

        // The pipeline's pruned model: dprune prune (magnitude, 20%), then a bundle in both formats; its torch half against its ONNX half.
        string pruned = temp.File("pruned");
        PruneRunner.Run(new PruneRequest { ModelPath = MnistUNet, Method = "magnitude", TargetParams = 0.2, OutputPath = pruned, Steps = 2, Calibration = 2 }, CPU);
        string prunedBundle = Export(pruned, temp.File("pruned-bundle"), ExportFormat.Safetensors, ExportFormat.Onnx);
        using var reloaded = ModelFamilies.Load(prunedBundle);
        Assert.False(reloaded.Structure.IsEmpty);
        Assert.True(OnnxModelInfo.Load(Path.Combine(prunedBundle, ModelFolder.OnnxInfo)).Pruned);
        SampleBoth(reloaded, prunedBundle, "mnist-unet magnitude 20%");
    }

    [Fact]
    public void Class_conditional_unet_bundle_samples_what_torch_samples_with_labels()
    {
        using var temp = Fixtures.Temp();
        string folder = TinyUNet(temp.File("unet"), "\"num_class_embeds\": 10");
        string bundle = Export(folder, temp.File("bundle"));
        using var model = ModelFamilies.Load(folder);
        Assert.Equal((10, (int?)null), (model.NumClasses!.Value, model.NullClass));
        SampleBoth(model, bundle, "tiny U-Net, num_class_embeds 10", labels: [2, 9]);
    }

    [Theory]
    [InlineData("timestep")]
    [InlineData("identity")]
    public void A_bundle_whose_class_embedding_has_no_class_count_exports_but_is_refused_for_sampling_with_the_reason(string classEmbedType)
    {
        using var temp = Fixtures.Temp();
        string bundle = Export(TinyUNet(temp.File("unet"), $"\"class_embed_type\": \"{classEmbedType}\""), temp.File("bundle"));
        Assert.Contains(OnnxBundle.ClassLabelsInput, OnnxModelInfo.Load(Path.Combine(bundle, ModelFolder.OnnxInfo)).InputNames);

        var error = Assert.Throws<NotSupportedException>(() => OnnxDenoiserSession.Open(bundle, "cpu"));

        Assert.Contains("num_classes", error.Message);
        Assert.Contains("timestep or identity", error.Message);
    }

    /// <summary>A tiny random 1 x 16 x 16 U-Net with <paramref name="options"/> added to its config, saved as a diffusers folder.</summary>
    private static string TinyUNet(string folder, string options)
    {
        var config = System.Text.Json.Nodes.JsonNode.Parse("""
            {"_class_name": "UNet2DModel", "sample_size": 16, "in_channels": 1, "out_channels": 1,
             "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 4,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            """ + options + "}");
        manual_seed(13);
        using var model = ModelFamilies.Create(ConfigJson.Parse(config!.ToJsonString()));
        DiffusersModelLoader.Save(model, folder);
        return folder;
    }

    [Fact]
    public void The_demos_array_sampler_on_a_class_conditional_bundle_matches_torch_with_guidance()
    {
        using var temp = Fixtures.Temp();
        string folder = TinyImageDiT.WriteTo(temp.File("tiny-dit"));
        string bundle = Export(folder, temp.File("bundle"));
        using var model = ModelFamilies.Load(folder);
        SampleBoth(model, bundle, "tiny 1-channel DiT (CFG)", labels: [0, 9, 4], guidance: 3.0, batch: 3);

        // The TorchSharp-free path OnDeviceDemo runs: ArrayDDIMScheduler + ArrayDiffusionSampler on OnnxDenoiserSession.
        using var session = OnnxDenoiserSession.Open(bundle, "cpu");
        using var scheduler = Scheduler.FromFile(Path.Combine(bundle, ModelFolder.SchedulerConfig), "ddim");
        var arrayScheduler = ArrayDDIMScheduler.FromFile(Path.Combine(bundle, ModelFolder.SchedulerConfig));
        using var scope = NewDisposeScope();
        var noise = randn([3, 1, 8, 8], generator: new Generator(5));
        long[] labels = [2, 5, 8];
        var expected = DiffusionSampler.Sample(model, scheduler, noise, tensor(labels), new SampleOptions(Steps, 3.0)).Final;

        var actual = ArrayDiffusionSampler.Sample(session.Predict, session.Model.NullClass, arrayScheduler, noise.data<float>().ToArray(), [3, 1, 8, 8], labels,
            Steps, guidanceScale: 3.0);

        double error = Fixtures.RelativeError(tensor(actual, [3, 1, 8, 8]), expected);
        output.WriteLine($"tiny 1-channel DiT, array sampler (OnDeviceDemo's path) vs torch, CFG 3: {error:E2}");
        Assert.True(error <= Tolerance, $"array sampler vs torch: {error:E3}");
    }
}

/// <summary>
/// A tiny class-conditional DiT that makes images (1 x 8 x 8, 10 classes + null class, learned sigma), saved as a
/// diffusers folder with random weights: the class-conditional bundle for tests that need pixels (the DiT fixture makes latents).
/// </summary>
internal static class TinyImageDiT
{
    public static string WriteTo(string folder)
    {
        manual_seed(3);
        using var model = new DiTTransformer2DModel(new DiTConfig
        {
            NumAttentionHeads = 2,
            AttentionHeadDim = 8,
            InChannels = 1,
            OutChannels = 2,
            NumLayers = 2,
            SampleSize = 8,
            PatchSize = 2,
            NumEmbedsAdaNorm = 10,
        });
        // Fresh LayerNorms are the identity and small default weights make the labels matter little; perturb so the labels and the blocks matter.
        using (no_grad())
            foreach (var (_, p) in model.named_parameters())
                p.add_(randn(p.shape) * 0.05);
        DiffusersModelLoader.Save(model, folder);
        return folder;
    }
}
