using DiffusionPrune.Families;
using DiffusionPrune.Models;

namespace DiffusionPrune.Tests.Cli;

/// <summary>
/// <c>dprune init</c> (a random-weights model folder from a config) and the hidden <c>dprune probe-step</c> that
/// benchmarks/sd15-unet.sh runs on such a folder, through the real executable.
/// </summary>
public class InitCliTests
{
    private static string ConditionConfig => Path.Combine(Fixtures.Diffusers("unet2d-condition-small", "model"), "config.json");

    [Fact]
    public void Init_writes_a_loadable_model_whose_weights_follow_the_seed()
    {
        using var temp = Fixtures.Temp();
        var (code, stdout, stderr) = CliTests.Dprune("init", "--config", ConditionConfig, "--output", temp.File("a"), "--seed", "1");
        Assert.True(code == 0, stderr);
        Assert.Contains("UNet2DConditionModel", stdout);
        Assert.True(CliTests.Dprune("init", "--config", ConditionConfig, "--output", temp.File("b"), "--seed", "1").exitCode == 0);
        Assert.True(CliTests.Dprune("init", "--config", ConditionConfig, "--output", temp.File("c"), "--seed", "2").exitCode == 0);

        using var a = ModelFamilies.Load(temp.File("a"));
        using var b = ModelFamilies.Load(temp.File("b"));
        using var c = ModelFamilies.Load(temp.File("c"));
        using var fixture = ModelFamilies.Load(Fixtures.Diffusers("unet2d-condition-small", "model"));
        Assert.Equal(fixture.parameters().Sum(p => p.numel()), a.parameters().Sum(p => p.numel()));
        var (sa, sb, sc) = (a.state_dict(), b.state_dict(), c.state_dict());
        Assert.All(sa, kv => Assert.True(kv.Value.equal(sb[kv.Key]).all().item<bool>(), $"{kv.Key}: the same seed gave other weights"));
        Assert.False(sa.All(kv => kv.Value.equal(sc[kv.Key]).all().item<bool>()), "another seed gave the same weights");
    }

    [Fact]
    public void Init_refuses_a_folder_that_holds_files_and_a_config_it_cannot_build()
    {
        using var temp = Fixtures.Temp();
        Directory.CreateDirectory(temp.File("full"));
        File.WriteAllText(temp.File("full/keep.txt"), "mine");
        var (code, _, stderr) = CliTests.Dprune("init", "--config", ConditionConfig, "--output", temp.File("full"));
        Assert.Equal(2, code);
        Assert.Contains("is not empty", stderr);
        Assert.Equal("mine", File.ReadAllText(temp.File("full/keep.txt")));

        File.WriteAllText(temp.File("bad.json"), """{"_class_name": "UNet3DConditionModel"}""");
        (code, _, stderr) = CliTests.Dprune("init", "--config", temp.File("bad.json"), "--output", temp.File("new"));
        Assert.Equal(2, code);
        Assert.Contains("UNet3DConditionModel", stderr);
        Assert.False(File.Exists(temp.File("new/config.json")));
    }

    [Fact]
    public void Probe_step_times_a_guided_step_of_a_text_conditioned_U_Net_and_reports_its_memory()
    {
        using var temp = Fixtures.Temp();
        Assert.True(CliTests.Dprune("init", "--config", ConditionConfig, "--output", temp.File("m")).exitCode == 0);
        var (code, stdout, stderr) = CliTests.Dprune("probe-step", "--model", temp.File("m"), "--latent", "16", "--batch", "2", "--steps", "2");
        Assert.True(code == 0, stderr);
        Assert.Contains("loaded class=UNet2DConditionModel", stdout);
        Assert.Matches(@"rss_anon_mb=\d+ rss_file_mb=\d+ peak_rss_mb=\d+", stdout);
        Assert.Matches(@"step latent=16x16 batch=2 seconds_mean=\d+\.\d\d", stdout);
    }
}
