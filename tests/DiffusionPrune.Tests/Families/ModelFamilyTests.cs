using DiffusionPrune.Export;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Families;

/// <summary>The family registry is the one place that knows model classes; the conditioning record is what forwards take.</summary>
public class ModelFamilyTests
{
    private static UNet2DConfig TinyUNet => new()
    {
        SampleSize = [8, 8],
        InChannels = 1,
        OutChannels = 1,
        DownBlockTypes = ["DownBlock2D", "AttnDownBlock2D"],
        UpBlockTypes = ["AttnUpBlock2D", "UpBlock2D"],
        BlockOutChannels = [8, 16],
        LayersPerBlock = 1,
        NormNumGroups = 4,
        AttentionHeadDim = 4,
    };

    private static string UNetFixture => Fixtures.Diffusers("unet2d-small", "model");
    private static string DiTFixture => Fixtures.Diffusers("dit-small", "model");
    private static string UNetConditionFixture => Fixtures.Diffusers("unet2d-condition-small", "model");

    [Fact]
    public void Every_family_is_found_by_its_class_name_and_short_name_and_builds_its_own_class()
    {
        Assert.Equal(["UNet2DModel", "DiTTransformer2DModel", "UNet2DConditionModel"], ModelFamilies.All.Select(f => f.ClassName));
        foreach (var (family, fixture) in new[] { (ModelFamilies.All[0], UNetFixture), (ModelFamilies.All[1], DiTFixture), (ModelFamilies.All[2], UNetConditionFixture) })
        {
            Assert.Same(family, ModelFamilies.ForClass(family.ClassName));
            Assert.Same(family, ModelFamilies.ForShortName(family.ShortName.ToUpperInvariant()));
            using var model = ModelFamilies.Create(ConfigJson.Load(Path.Combine(fixture, "config.json")));
            Assert.Equal(family.ClassName, model.ClassName);
            Assert.True(family.Owns(model));
            Assert.Same(family, ModelFamilies.Of(model));
        }
        Assert.Null(ModelFamilies.ForClass("UNet3DConditionModel"));
    }

    [Fact]
    public void An_unregistered_class_names_the_supported_ones()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("config.json"), """{"_class_name": "UNet3DConditionModel"}""");
        var error = Assert.Throws<ModelFormatException>(() => ModelFamilies.Create(ConfigJson.Load(temp.File("config.json"))));
        Assert.Contains("'UNet3DConditionModel' is not supported yet (supported: UNet2DModel, DiTTransformer2DModel, UNet2DConditionModel)", error.Message);
    }

    [Fact]
    public void Each_family_says_which_conditioning_its_models_take()
    {
        using (var plain = new UNet2DModel(TinyUNet))
            Assert.Equal(ConditioningKind.None, ModelFamilies.ConditioningOf(plain).Kind);
        using (var labelled = new UNet2DModel(TinyUNet with { NumClassEmbeds = 3 }))
            Assert.Equal(ConditioningKind.ClassLabels, ModelFamilies.ConditioningOf(labelled).Kind);
        using (var timestepClass = new UNet2DModel(TinyUNet with { ClassEmbedType = "timestep" }))
            Assert.Equal(ConditioningKind.ClassLabels, ModelFamilies.ConditioningOf(timestepClass).Kind);
        using (var identity = new UNet2DModel(TinyUNet with { ClassEmbedType = "identity" }))
        {
            var input = ModelFamilies.ConditioningOf(identity);
            Assert.Equal(new ConditioningInput(ConditioningKind.ClassEmbedding, identity.Config.TimeEmbedDim), input);
            using var scope = NewDisposeScope();
            // The zero conditioning is one the model accepts: a [B, time_embed_dim] embedding.
            var output = identity.Forward(zeros(2, 1, 8, 8), input.Zero(tensor(10L), 2, CPU));
            Assert.Equal(new long[] { 2, 1, 8, 8 }, output.shape);
            Assert.True(OnnxContract.TakesClassLabels(identity));
        }
        using var dit = ModelFamilies.Load(DiTFixture);
        Assert.Equal(ConditioningKind.ClassLabels, ModelFamilies.ConditioningOf(dit).Kind);
    }

    [Fact]
    public void WithStructure_builds_the_same_class_with_the_narrower_structure()
    {
        using var model = ModelFamilies.Load(UNetFixture);
        var structure = new ModelStructure();
        string resnet = model.named_modules().First(m => m.module is ResnetBlock2D).name;
        structure.ResnetInnerChannels[resnet] = 8; // one group of the fixture's 8 channels per group kept
        using var narrow = ModelFamilies.Of(model).WithStructure(model, structure);
        var unet = Assert.IsType<UNet2DModel>(narrow);
        Assert.Equal(8, unet.Config.Structure!.ResnetInner(resnet, -1));
        Assert.Equal(8, narrow.state_dict()[$"{resnet}.conv1.weight"].shape[0]);
        Assert.True(model.state_dict()[$"{resnet}.conv1.weight"].shape[0] > 8);
    }

    [Fact]
    public void The_conditioning_record_gives_the_same_output_as_timestep_and_labels()
    {
        using var dit = ModelFamilies.Load(DiTFixture);
        using var scope = NewDisposeScope();
        var generator = new Generator(seed: 3);
        var sample = randn([2, dit.InChannels, dit.SampleSize[0], dit.SampleSize[1]], generator: generator);
        var labels = tensor(new long[] { 1, 0 });
        using var noGrad = no_grad();
        var viaRecord = dit.Forward(sample, new Conditioning(tensor(7L), labels));
        var viaArguments = dit.Forward(sample, tensor(7L), labels);
        Assert.Equal(0.0, (viaRecord - viaArguments).abs().max().item<float>());
        var atOther = dit.Predict(sample, new Conditioning(tensor(7L), labels).At(tensor(900L)));
        Assert.True((atOther - dit.Predict(sample, tensor(900L), labels)).abs().max().item<float>() == 0);
    }

    [Fact]
    public void Conditioning_a_model_does_not_use_is_refused_with_what_it_is_for()
    {
        using var unet = ModelFamilies.Load(UNetFixture);
        using var dit = ModelFamilies.Load(DiTFixture);
        using var scope = NewDisposeScope();
        var sample = zeros(1, unet.InChannels, unet.SampleSize[0], unet.SampleSize[1]);
        var text = new Conditioning(tensor(1L), EncoderHiddenStates: zeros(1, 4, 8));
        var error = Assert.Throws<ArgumentException>(() => unet.Forward(sample, text));
        Assert.Contains("UNet2DConditionModel", error.Message);
        Assert.Contains("has no class embedding", Assert.Throws<ArgumentException>(() => unet.Forward(sample, tensor(1L), tensor(new long[] { 0 }))).Message);

        var added = new Conditioning(tensor(1L), tensor(new long[] { 0 }), AddedConditions: new Dictionary<string, Tensor> { ["time_ids"] = zeros(1, 6) });
        var ditSample = zeros(1, dit.InChannels, dit.SampleSize[0], dit.SampleSize[1]);
        Assert.Contains("time_ids", Assert.Throws<ArgumentException>(() => dit.Forward(ditSample, added)).Message);
    }

    [Fact]
    public void Training_initialisation_goes_through_the_family()
    {
        var dit = ModelFamilies.ForShortName("dit")!;
        var unet = ModelFamilies.ForShortName("unet")!;
        Assert.True(dit.SupportsSharedQueryKeyInit);
        Assert.False(unet.SupportsSharedQueryKeyInit);
        using var model = new UNet2DModel(TinyUNet);
        Assert.Throws<ArgumentException>(() => unet.InitializeForTraining(model, sharedQueryKey: true));
        unet.InitializeForTraining(model); // nothing to do for a U-Net, and no error
        using var ditModel = ModelFamilies.Create(ConfigJson.Load(Path.Combine(DiTFixture, "config.json")));
        dit.InitializeForTraining(ditModel);
        // adaLN-Zero: every block's modulation starts at zero.
        Assert.All(ditModel.named_parameters().Where(p => p.name.EndsWith("norm1.linear.weight", StringComparison.Ordinal)),
            p => Assert.Equal(0.0, p.parameter.abs().max().item<float>()));
    }
}
