using DiffusionPrune.Families;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Models;

/// <summary>Our models reproduce the outputs diffusers computed for the shared fixtures.</summary>
public class FixtureParityTests
{
    [Fact]
    public void UNet2DModel_forward_matches_diffusers_for_all_timesteps()
    {
        using var model = ModelFamilies.Load(Fixtures.Diffusers("unet2d-small", "model"));
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("unet2d-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var output = model.Forward(io.ReadFloat("sample"), io.Read("timestep"));
        Assert.Equal(1623169, model.ParameterCount());
        Assert.True(Fixtures.RelativeError(output, io.ReadFloat("output")) <= 1e-4, $"error {Fixtures.RelativeError(output, io.ReadFloat("output"))}");
    }

    [Fact]
    public void DiT_forward_matches_diffusers_including_null_class()
    {
        using var model = ModelFamilies.Load(Fixtures.Diffusers("dit-small", "model"));
        using var io = SafetensorsFile.Open(Fixtures.Diffusers("dit-small", "io.safetensors"));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var output = model.Forward(io.ReadFloat("sample"), io.Read("timestep"), io.Read("class_labels"));
        Assert.Equal(299488, model.ParameterCount());
        Assert.True(model.LearnedSigma);
        double error = Fixtures.RelativeError(output, io.ReadFloat("output"));
        Assert.True(error <= 1e-4, $"error {error}");
    }
}
