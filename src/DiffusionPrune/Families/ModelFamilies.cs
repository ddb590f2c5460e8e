using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Families;

/// <summary>
/// The registry of model families, and the loader that goes through it: the rest of the library asks here instead of
/// switching on model classes. Register a new family in <see cref="All"/>.
/// </summary>
public static class ModelFamilies
{
    /// <summary>Every supported family, in the order help texts list them.</summary>
    public static IReadOnlyList<ModelFamily> All { get; } = [new UNet2DFamily(), new DiTFamily(), new UNet2DConditionFamily()];

    /// <summary>The family of a diffusers <c>_class_name</c>, or null.</summary>
    public static ModelFamily? ForClass(string? className) => All.FirstOrDefault(f => f.ClassName == className);

    /// <summary>The family of a short name (<c>unet</c>, <c>dit</c>), or null.</summary>
    public static ModelFamily? ForShortName(string shortName) => All.FirstOrDefault(f => string.Equals(f.ShortName, shortName, StringComparison.OrdinalIgnoreCase));

    /// <summary>The family a loaded model belongs to.</summary>
    public static ModelFamily Of(DiffusionModel model) => All.FirstOrDefault(f => f.Owns(model))
        ?? throw new NotSupportedException($"Model class {model.ClassName} has no registered family.");

    /// <summary>"UNet2DModel, DiTTransformer2DModel": for messages.</summary>
    public static string SupportedClasses => string.Join(", ", All.Select(f => f.ClassName));

    /// <summary>
    /// Builds the model a config describes, with fresh (random) weights, after checking from the config alone that the
    /// weights and one forward fit the memory limit (<see cref="ResourceNeed.EnsureFits"/>).
    /// </summary>
    public static DiffusionModel Create(ConfigJson config)
    {
        var family = FamilyOf(config);
        Estimate(config, family).Inference(1).EnsureFits(config.Source);
        return family.Create(config);
    }

    /// <summary>What the model a config describes needs (parameters, MACs, activation memory), without building it.</summary>
    public static ResourceEstimate Estimate(ConfigJson config) => Estimate(config, FamilyOf(config));

    /// <summary>The estimate of a model folder's (or a pipeline's denoiser's) config.</summary>
    public static ResourceEstimate EstimateFolder(string path) =>
        Estimate(ConfigJson.Load(Path.Combine(DiffusersModelLoader.ResolveModelFolder(path), ModelFolder.Config)));

    private static ResourceEstimate Estimate(ConfigJson config, ModelFamily family)
    {
        try
        {
            return family.EstimateResources(config);
        }
        catch (OverflowException)
        {
            throw new ResourceLimitException($"{config.Source}: the model it describes has more than 2^63 parameters, multiply-accumulates or activation elements; no machine can hold it.");
        }
    }

    private static ModelFamily FamilyOf(ConfigJson config) => config.ClassName switch
    {
        null => throw new ModelFormatException($"{config.Source} has no _class_name; cannot tell which model it describes."),
        var name when ForClass(name) is { } family => family,
        var other => throw new ModelFormatException($"{config.Source}: model class '{other}' is not supported yet (supported: {SupportedClasses})."),
    };

    /// <summary>
    /// Loads a diffusers model folder (or a pipeline's denoiser) strictly: every key must match in name and shape
    /// (see <see cref="DiffusersModelLoader"/>), after the family upgrades older key names.
    /// </summary>
    public static DiffusionModel Load(string path, string? variant = null, Device? device = null)
    {
        string folder = DiffusersModelLoader.ResolveModelFolder(path);
        var config = ConfigJson.Load(Path.Combine(folder, ModelFolder.Config));
        var model = Create(config);
        try
        {
            using var weights = DiffusersModelLoader.OpenWeights(folder, variant);
            Of(model).UpgradeWeights(weights.Tensors);
            DiffusersModelLoader.LoadStrict(model, weights, folder);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        if (device is not null) model.to(device);
        return model;
    }

    /// <summary>What the model's forward takes besides the sample and timestep.</summary>
    public static ConditioningInput ConditioningOf(DiffusionModel model) => Of(model).ConditioningOf(model);
}
