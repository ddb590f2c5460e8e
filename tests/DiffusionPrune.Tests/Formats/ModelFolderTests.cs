using DiffusionPrune.Formats;
using DiffusionPrune.Schedulers;

namespace DiffusionPrune.Tests.Formats;

/// <summary>The model-folder contract: names diffusers and our own readers agree on, and the default scheduler a trained model ships with.</summary>
public class ModelFolderTests
{
    [Fact]
    public void The_file_names_are_the_ones_diffusers_and_our_shipped_models_use()
    {
        string model = Path.Combine(Fixtures.RepoRoot, "samples", "models", "mnist-unet");
        Assert.True(File.Exists(Path.Combine(model, ModelFolder.Config)));
        Assert.True(File.Exists(Path.Combine(model, ModelFolder.Weights)));
        Assert.True(File.Exists(Path.Combine(model, ModelFolder.SchedulerConfig)));
        Assert.Equal("diffusion_pytorch_model.safetensors.index.json", ModelFolder.WeightsIndex);
    }

    [Fact]
    public void Class_conditional_models_ship_the_default_schedule_without_clipping_and_nothing_else_differs()
    {
        var unconditional = SchedulerConfig.Parse(ModelFolder.DefaultSchedulerJson(classConditional: false));
        var conditional = SchedulerConfig.Parse(ModelFolder.DefaultSchedulerJson(classConditional: true));
        Assert.True(unconditional.ClipSample);
        Assert.False(conditional.ClipSample);
        var differing = ModelFolder.DefaultSchedulerJson(false).Split('\n').Except(ModelFolder.DefaultSchedulerJson(true).Split('\n'));
        Assert.Equal(["  \"clip_sample\": true,"], differing.Select(l => l.Trim().Insert(0, "  ")));
    }
}
