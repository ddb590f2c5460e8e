using DiffusionPrune.Models;
using DiffusionPrune.Pruning;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Pruning;

/// <summary>Models, inputs and seeded random plans shared by the pruning tests.</summary>
internal static class PruningTestSupport
{
    public static string UNetFixture => Fixtures.Diffusers("unet2d-small", "model");
    public static string DiTFixture => Fixtures.Diffusers("dit-small", "model");

    /// <summary>
    /// A seeded random valid plan: removes <paramref name="removeLayers"/> and narrows every other unit
    /// group to 40-80% of its units (always strictly fewer), keeping the top random scores.
    /// </summary>
    public static PruningPlan RandomPlan(PrunableGroups groups, int seed, params string[] removeLayers)
    {
        var rng = new Random(seed);
        var plan = new PruningPlan();
        foreach (var layer in removeLayers) plan.RemovedLayers.Add(layer);
        foreach (var group in groups.Units)
        {
            if (removeLayers.Any(group.IsWithin)) continue;
            int keep = group.ValidKeepCount((int)Math.Round((0.4 + 0.4 * rng.NextDouble()) * group.Units));
            if (keep == group.Units)
                keep = group is ResnetChannelGroup r ? (r.ChannelsPerNormGroup - 1) * r.NormGroups : group.Units - 1;
            if (keep < 1) continue; // nothing can be removed from a group of one unit per norm group
            var scores = Enumerable.Range(0, group.Units).Select(_ => (float)rng.NextDouble()).ToArray();
            plan.Keep[group.Path] = group.KeepTop(scores, keep);
        }
        return plan;
    }

    /// <summary>Fixed inputs for a model: two samples, two timesteps, labels for class-conditional models.</summary>
    public static (Tensor sample, Tensor timestep, Tensor? labels) Inputs(DiffusionModel model, long seed)
    {
        var generator = new Generator((ulong)seed);
        var sample = randn([2, model.InChannels, model.SampleSize[0], model.SampleSize[1]], generator: generator);
        var timestep = tensor(new long[] { 17, 613 });
        Tensor? labels = model.NumClasses is int classes ? tensor(new long[] { 3 % classes, model.NullClass ?? 0 }) : null;
        return (sample, timestep, labels);
    }

    public static Tensor Run(DiffusionModel model, (Tensor sample, Tensor timestep, Tensor? labels) inputs)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return model.Forward(inputs.sample, inputs.timestep, inputs.labels).MoveToOuterDisposeScope();
    }

    /// <summary>Output of <paramref name="model"/> with <paramref name="plan"/> applied as gates (cleared afterwards).</summary>
    public static Tensor RunMasked(DiffusionModel model, PruningPlan plan, (Tensor sample, Tensor timestep, Tensor? labels) inputs)
    {
        using var masked = MaskedModel.Apply(model, plan);
        return Run(model, inputs);
    }

    /// <summary>
    /// A tiny scale_shift U-Net with resnet down/upsamplers (random weights): 3 levels of 8/8/16
    /// channels, 4 norm groups, attention heads of 4 channels.
    /// </summary>
    public static UNet2DModel TinyScaleShiftUNet(int seed)
    {
        manual_seed(seed);
        var config = new UNet2DConfig
        {
            SampleSize = [8, 8],
            InChannels = 2,
            OutChannels = 2,
            BlockOutChannels = [8, 8, 16],
            DownBlockTypes = ["AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
            UpBlockTypes = ["UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"],
            DownsampleType = "resnet",
            UpsampleType = "resnet",
            LayersPerBlock = 1,
            NormNumGroups = 4,
            AttentionHeadDim = 4,
            ResnetTimeScaleShift = "scale_shift",
        };
        var model = new UNet2DModel(config);
        // Fresh GroupNorms are weight 1 / bias 0; perturb them so their coupled rows matter too.
        using (no_grad())
            foreach (var (name, p) in model.named_parameters())
                if (name.Contains("norm")) p.add_(randn(p.shape) * 0.1);
        model.eval();
        return model;
    }
}
