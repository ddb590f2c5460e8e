using DiffusionPrune.Pruning;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>Batch plans mix models: the calibration guidance applies to models with a null class and leaves the others unguided.</summary>
public class PruneRunnerGuidanceTests
{
    private static PruneReport Prune(string model, TempFolder temp) => PruneRunner.Run(new PruneRequest
    {
        ModelPath = model,
        Method = "ecodiff",
        TargetParams = 0.1,
        OutputPath = temp.File("pruned"),
        SchedulerConfigPath = Fixtures.Diffusers("unet2d-small", "scheduler_config.json"),
        Steps = 2,
        Iterations = 1,
        Calibration = 2,
        GuidanceIfConditional = 2.5,
    }, CPU);

    [Fact]
    public void A_DiT_is_calibrated_with_the_guidance_and_a_UNet_without_it()
    {
        using (var temp = Fixtures.Temp())
            Assert.Equal(2.5, Prune(Fixtures.Diffusers("dit-small", "model"), temp).Settings["guidance_scale"]!.GetValue<double>());
        using (var temp = Fixtures.Temp())
            Assert.Equal(1.0, Prune(Fixtures.Diffusers("unet2d-small", "model"), temp).Settings["guidance_scale"]!.GetValue<double>());
    }
}
