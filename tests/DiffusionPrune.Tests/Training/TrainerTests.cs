using DiffusionPrune.Data;
using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Schedulers;
using DiffusionPrune.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Training;

[Collection(Collection)]
public class TrainerTests
{
    public const string Collection = "training runs compared bit for bit";

    internal const string TinyUNet = """
        {"_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 1, "out_channels": 1,
         "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
         "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
        """;

    private const string TinyDiT = """
        {"_class_name": "DiTTransformer2DModel", "sample_size": 32, "in_channels": 1, "out_channels": 1, "patch_size": 8,
         "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 1, "num_embeds_ada_norm": 10}
        """;

    private static DiffusionModel Build(string json, long seed)
    {
        manual_seed(seed);
        return ModelFamilies.Create(ConfigJson.Parse(json));
    }

    private static readonly Lazy<MnistDataset> Data = new(() => MnistDataset.Load());

    private static TrainOptions Options(int steps) => new()
    {
        Steps = steps, BatchSize = 4, WarmupSteps = 2, CheckpointEvery = 3, Seed = 11, LearningRate = 1e-3,
    };

    [Fact]
    public void A_non_finite_loss_stops_training_at_that_step_with_one_line()
    {
        using var folder = Fixtures.Temp();
        using var model = Build(TinyUNet, 5);
        using (no_grad()) model.named_parameters().First(p => p.name == "conv_out.weight").parameter.fill_(float.NaN);
        var e = Assert.Throws<DiffusionPrune.Runtime.NonFiniteValueException>(() =>
            new DiffusionTrainer(model, Data.Value.Train, Options(3), folder.Path).Train(resume: false));
        Assert.Contains("train step 1", e.Message);
        Assert.Contains("dprune doctor", e.Message);
    }

    [Fact]
    public void A_run_interrupted_mid_way_and_resumed_equals_an_uninterrupted_run()
    {
        using var straightFolder = Fixtures.Temp();
        // Both runs start from the same weights, copied rather than re-drawn: other test classes run in parallel
        // and may draw from the global generator between a manual_seed and a model's construction.
        Dictionary<string, Tensor> initial;
        using (var model = Build(TinyUNet, 5))
        {
            initial = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone(), StringComparer.Ordinal);
            new DiffusionTrainer(model, Data.Value.Train, Options(6), straightFolder.Path).Train(resume: false);
        }

        using var resumedFolder = Fixtures.Temp();
        using (var model = Build(TinyUNet, 5))
        {
            DiffusersModelLoader.LoadStrict(model, initial, "the straight run's initial weights");
            using var cancel = new CancellationTokenSource();
            var trainer = new DiffusionTrainer(model, Data.Value.Train, Options(6), resumedFolder.Path);
            // "Crash" after step 4: the last checkpoint is at step 3.
            Assert.Throws<OperationCanceledException>(() => trainer.Train(false, p => { if (p.Step == 4) cancel.Cancel(); }, cancel.Token));
        }
        using (var fresh = Build(TinyUNet, 99)) // different init: everything must come from the checkpoint
        {
            var result = new DiffusionTrainer(fresh, Data.Value.Train, Options(6), resumedFolder.Path).Train(resume: true);
            Assert.Equal(6, result.Steps);
        }

        var a = DiffusersModelLoader.ReadSafetensors(Path.Combine(straightFolder.Path, "diffusion_pytorch_model.safetensors"));
        var b = DiffusersModelLoader.ReadSafetensors(Path.Combine(resumedFolder.Path, "diffusion_pytorch_model.safetensors"));
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var key in a.Keys)
            Assert.True(Fixtures.RelativeError(b[key], a[key]) < 1e-5, $"{key} differs after resume by {Fixtures.RelativeError(b[key], a[key])}");
        var liveA = DiffusersModelLoader.ReadSafetensors(Path.Combine(straightFolder.Path, "checkpoint", "model.safetensors"));
        var liveB = DiffusersModelLoader.ReadSafetensors(Path.Combine(resumedFolder.Path, "checkpoint", "model.safetensors"));
        foreach (var key in liveA.Keys)
            Assert.True(Fixtures.RelativeError(liveB[key], liveA[key]) < 1e-5, $"live weight {key} differs after resume");
    }

    [Fact]
    public void Training_lowers_the_loss_and_writes_a_loadable_diffusers_folder()
    {
        using var folder = Fixtures.Temp();
        var losses = new List<double>();
        using (var model = Build(TinyUNet, 1))
            new DiffusionTrainer(model, Data.Value.Train, Options(30) with { BatchSize = 16, LearningRate = 3e-3 }, folder.Path)
                .Train(false, p => losses.Add(p.Loss));
        Assert.True(losses.Skip(25).Average() < losses.Take(5).Average() * 0.8, $"loss did not fall: {losses.First():F3} -> {losses.Last():F3}");
        using var loaded = ModelFamilies.Load(folder.Path);
        Assert.True(SchedulerConfig.Parse(File.ReadAllText(Path.Combine(folder.Path, "scheduler_config.json"))).ClipSample, "an unconditional model keeps diffusers' clip_sample default");
        Assert.True(File.Exists(Path.Combine(folder.Path, "training_args.json")));
    }

    [Fact]
    public void Class_conditional_training_uses_the_null_class_and_resume_without_checkpoint_is_a_clear_error()
    {
        using var folder = Fixtures.Temp();
        using var model = Build(TinyDiT, 2);
        var trainer = new DiffusionTrainer(model, Data.Value.Train, Options(2) with { ClassDropout = 1.0 }, folder.Path);
        var error = Assert.Throws<FileNotFoundException>(() => trainer.Train(resume: true));
        Assert.Contains("--resume", error.Message);
        trainer.Train(resume: false);
        using var loaded = ModelFamilies.Load(folder.Path);
        Assert.Equal(10, loaded.NullClass);
        var scheduler = SchedulerConfig.Parse(File.ReadAllText(Path.Combine(folder.Path, "scheduler_config.json")));
        Assert.False(scheduler.ClipSample, "a guided model must not clip x0 (DDIM would step with a clipped x0 and an unclipped noise prediction)");
        Assert.Equal(0.02, scheduler.BetaEnd, 6);
    }
}
