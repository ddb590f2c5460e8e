using DiffusionPrune.Families;
using DiffusionPrune.Models;

namespace DiffusionPrune.Tests.Cli;

/// <summary><c>dprune train</c> through the real executable: the DiT attention initialisation option.</summary>
public class TrainCliTests
{
    private const string TinyDiT = """
        {"_class_name": "DiTTransformer2DModel", "sample_size": 32, "in_channels": 1, "out_channels": 1, "patch_size": 8,
         "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 1, "num_embeds_ada_norm": 10,
         "norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": true}
        """;

    [Fact]
    public void A_DiT_trained_with_shared_query_key_init_runs_and_saves_a_loadable_model()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("dit.json"), TinyDiT);
        string output = temp.File("out");
        var (code, stdout, stderr) = CliTests.Dprune("train", "--arch", "dit", "--config", temp.File("dit.json"), "--steps", "2", "--batch", "4",
            "--warmup", "1", "--attention-init", "shared-qk", "--output", output);
        Assert.True(code == 0, stderr);
        Assert.Contains("done: 2 steps", stdout);
        using var model = (DiTTransformer2DModel)ModelFamilies.Load(output);
        Assert.Single(model.Blocks);
    }

    [Fact]
    public void Attention_init_errors_are_one_line_messages()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("dit.json"), TinyDiT);
        var (code, _, stderr) = CliTests.Dprune("train", "--arch", "dit", "--config", temp.File("dit.json"), "--steps", "1",
            "--attention-init", "orthogonal", "--output", temp.File("a"));
        Assert.Equal(2, code);
        Assert.Contains("--attention-init must be xavier or shared-qk", stderr);

        (code, _, stderr) = CliTests.Dprune("train", "--arch", "unet", "--config", Path.Combine(Fixtures.RepoRoot, "samples", "configs", "mnist-unet.json"),
            "--steps", "1", "--attention-init", "shared-qk", "--output", temp.File("b"));
        Assert.Equal(2, code);
        Assert.Contains("applies to DiT models", stderr);
    }
}
