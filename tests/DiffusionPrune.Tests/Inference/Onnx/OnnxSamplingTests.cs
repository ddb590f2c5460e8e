using DiffusionPrune.Formats;
using DiffusionPrune.Inference;
using DiffusionPrune.Inference.Onnx;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Inference.Onnx;

/// <summary>
/// The sampling loop on ONNX Runtime: the TorchSharp adapter under <see cref="DiffusionSampler"/> (the scheduler and
/// guidance code the torch backend uses) and the TorchSharp-free <see cref="ArrayDiffusionSampler"/> of the demo.
/// The tiny graph's output is known in closed form, so the adapter is checked against the same formula in torch.
/// Real exported U-Nets and DiTs against their torch models: ExportedBundleParityTests.
/// </summary>
public class OnnxSamplingTests
{
    [Fact]
    public void The_adapter_broadcasts_the_samplers_scalar_timestep_and_returns_the_prediction_tensor()
    {
        using var temp = Fixtures.Temp();
        var tiny = new TinyOnnxBundle { Channels = 2, Size = 4, SigmaChannels = 2 };
        using var denoiser = OnnxDenoiser.Open(tiny.WriteTo(temp.Path), "cpu");
        using var scope = NewDisposeScope();
        var sample = randn(3, 2, 4, 4, generator: new Generator(1));

        var prediction = denoiser.Denoise(sample, tensor(250L), null);

        Assert.Equal(new long[] { 3, 2, 4, 4 }, prediction.shape);
        Assert.Equal(ScalarType.Float32, prediction.dtype);
        Assert.True(Fixtures.RelativeError(prediction, sample * TinyOnnxBundle.SampleScale + 250 * tiny.TimestepScale) <= 1e-6);
        var perElement = denoiser.Denoise(sample, tensor(new long[] { 1, 2, 3 }), null);
        var expected = sample * TinyOnnxBundle.SampleScale + tensor(new float[] { 1, 2, 3 }).reshape(3, 1, 1, 1) * tiny.TimestepScale;
        Assert.True(Fixtures.RelativeError(perElement, expected) <= 1e-6);
    }

    [Fact]
    public void DiffusionSampler_on_the_onnx_adapter_equals_the_same_denoiser_written_in_torch()
    {
        using var temp = Fixtures.Temp();
        var tiny = new TinyOnnxBundle();
        using var denoiser = OnnxDenoiser.Open(tiny.WriteTo(temp.Path), "cpu");
        using var scheduler = Scheduler.Create(SchedulerConfig.Parse(TinyOnnxBundle.DefaultSchedulerConfig));
        using var scope = NewDisposeScope();
        var noise = randn(2, 1, 8, 8, generator: new Generator(7));
        DiffusionSampler.Denoise inTorch = (sample, t, _) => sample * TinyOnnxBundle.SampleScale + t.to_type(ScalarType.Float32) * tiny.TimestepScale;

        var onnx = DiffusionSampler.Sample(denoiser.Denoise, null, scheduler, noise, null, new SampleOptions(10, KeepTrajectory: true));
        var torchResult = DiffusionSampler.Sample(inTorch, null, scheduler.CloneFresh(), noise, null, new SampleOptions(10, KeepTrajectory: true));

        Assert.Equal(torchResult.Timesteps, onnx.Timesteps);
        Assert.True(Fixtures.RelativeError(onnx.Trajectory!, torchResult.Trajectory!) <= 1e-5);
        Assert.False(onnx.Final.isnan().any().item<bool>());
    }

    [Fact]
    public void The_torch_free_sampler_with_guidance_equals_DiffusionSampler_with_guidance()
    {
        using var temp = Fixtures.Temp();
        var tiny = new TinyOnnxBundle { NumClasses = 10, NullClass = 10, SigmaChannels = 1 };
        string bundle = tiny.WriteTo(temp.Path);
        using var denoiser = OnnxDenoiser.Open(bundle, "cpu");
        using var scheduler = Scheduler.FromFile(Path.Combine(bundle, ModelFolder.SchedulerConfig));
        var arrayScheduler = ArrayDDIMScheduler.FromFile(Path.Combine(bundle, ModelFolder.SchedulerConfig));
        using var scope = NewDisposeScope();
        var noise = randn(3, 1, 8, 8, generator: new Generator(11));
        long[] labels = [1, 5, 9];

        var expected = DiffusionSampler.Sample(denoiser.Denoise, 10, scheduler, noise, tensor(labels), new SampleOptions(8, GuidanceScale: 3.0));
        var actual = ArrayDiffusionSampler.Sample(denoiser.Session.Predict, 10, arrayScheduler, noise.data<float>().ToArray(), [3, 1, 8, 8], labels,
            8, guidanceScale: 3.0);

        Assert.True(Fixtures.RelativeError(tensor(actual, [3, 1, 8, 8]), expected.Final) <= 1e-5);
        // Guidance changed the result: labels weigh (cond − uncond) = (label − 10) · 0.01 three times.
        var unguided = ArrayDiffusionSampler.Sample(denoiser.Session.Predict, 10, arrayScheduler, noise.data<float>().ToArray(), [3, 1, 8, 8], labels, 8);
        Assert.True(Fixtures.RelativeError(tensor(actual, [3, 1, 8, 8]), tensor(unguided, [3, 1, 8, 8])) > 1e-3);
    }

    [Fact]
    public void SampleRunner_on_the_onnx_backend_writes_a_png_and_reports_the_provider()
    {
        using var temp = Fixtures.Temp();
        string bundle = new TinyOnnxBundle { NumClasses = 3, NullClass = 3 }.WriteTo(temp.File("bundle"));
        var lines = new List<string>();
        var request = new SampleRequest
        {
            ModelPath = bundle, Backend = "onnx", Provider = "cpu", Steps = 3, Count = 5, Labels = [2], GuidanceScale = 2.0,
            OutputPath = temp.File("grid.png"),
        };

        var result = SampleRunner.Run(request, CPU, report: lines.Add);

        Assert.Equal(new long[] { 5, 1, 8, 8 }, result.Final.shape);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(request.OutputPath)[..4]);
        Assert.Equal(["ONNX Runtime execution provider: CPU"], lines);
    }

    [Fact]
    public void Eval_generation_on_the_onnx_backend_is_batch_independent_and_reproduces_with_a_reference()
    {
        using var temp = Fixtures.Temp();
        string bundle = new TinyOnnxBundle { Size = 32, NumClasses = 10, NullClass = 10 }.WriteTo(temp.Path);
        using var model = InferenceModel.Load(bundle, "onnx", CPU, "cpu");
        using var reference = InferenceModel.Load(bundle, "onnx", CPU, "cpu");
        string schedulerPath = model.FindSchedulerConfig()!;
        var request = new DiffusionPrune.Evaluation.EvalRequest { ModelPath = bundle, Samples = 5, Steps = 3, BatchSize = 2, GuidanceScale = 1.5, Backend = "onnx" };

        var (images, labels, again, _) = DiffusionPrune.Evaluation.ModelEvaluator.Generate(model, reference, schedulerPath, request, CPU);

        Assert.Equal(new long[] { 5, 1, 32, 32 }, images.shape);
        Assert.Equal(new long[] { 0, 1, 2, 3, 4 }, labels!.data<long>().ToArray());
        Assert.Equal(0, Fixtures.RelativeError(again!, images));
    }

    [Fact]
    public void InferenceModel_reads_cost_and_shape_from_the_bundle()
    {
        using var temp = Fixtures.Temp();
        string bundle = new TinyOnnxBundle { Channels = 3, Size = 16, NumClasses = 4, NullClass = 4 }.WriteTo(temp.Path);
        using var model = InferenceModel.Load(bundle, "onnx", CPU, "cpu");
        Assert.Equal("onnx", model.Backend);
        Assert.Equal("onnx (CPU)", model.Runtime);
        Assert.Equal(3, model.InChannels);
        Assert.Equal([16, 16], model.SampleSize);
        Assert.Equal(4, model.NullClass);
        Assert.Equal((1234L, 5678L), model.Cost());
        Assert.Equal(Path.Combine(bundle, "scheduler_config.json"), model.FindSchedulerConfig());
        Assert.Throws<ArgumentException>(() => InferenceModel.Load(bundle, "tensorrt", CPU));
    }
}
