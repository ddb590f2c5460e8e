using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Models;

/// <summary>
/// The heavy layers free their intermediates when they return (<see cref="LayerScope"/>): a forward inside a caller's
/// dispose scope leaves only each layer's output there, not every tensor the layer made. Without it a Stable Diffusion
/// 1.5-shaped step held about 5 GB of dead activations (docs/BENCHMARKS.md).
/// </summary>
public class LayerScopeTests
{
    private static UNet2DConditionModel Fixture() => UNet2DConditionModel.Load(Fixtures.Diffusers("unet2d-condition-small", "model"));

    /// <summary>How many tensors <paramref name="forward"/> leaves in a dispose scope around it.</summary>
    private static long Left(Func<Tensor> forward)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        forward();
        return scope.DisposablesCount;
    }

    [Fact]
    public void A_ResNet_block_an_attention_and_a_transformer_leave_only_their_output_in_the_callers_scope()
    {
        using var model = Fixture();
        var down = (CrossAttnDownBlock2D)model.DownBlocks[0];
        var resnet = down.Resnets[0];
        var transformer = (Transformer2DModel)down.Attentions[0];
        var block = transformer.TransformerBlocks[0];
        var generator = new Generator(3);
        using var map = randn([2, 32, 16, 16], generator: generator);
        using var temb = randn([2, 128], generator: generator);
        using var tokens = randn([2, 256, 32], generator: generator);
        using var text = randn([2, 7, 32], generator: generator);

        Assert.Equal(1, Left(() => resnet.call(map, temb)));
        Assert.Equal(1, Left(() => block.Attn1.Forward(tokens, null, null)));
        Assert.Equal(1, Left(() => block.Attn2.Forward(tokens, text, null)));
        Assert.Equal(1, Left(() => block.Forward(tokens, text, null)));
        Assert.Equal(1, Left(() => transformer.Forward(map, text, null)));
    }

    [Fact]
    public void The_scoped_layers_outputs_are_unchanged_and_a_whole_U_Net_leaves_few_tensors()
    {
        using var model = Fixture();
        var generator = new Generator(5);
        using var sample = randn([2, 4, 16, 16], generator: generator);
        using var timestep = tensor(new long[] { 10, 500 });
        using var text = randn([2, 7, 32], generator: generator);
        var conditioning = new Conditioning(timestep, EncoderHiddenStates: text);
        using var noGrad = no_grad();
        using var first = model.Predict(sample, conditioning);
        using var second = model.Predict(sample, conditioning);
        Assert.True(first.isfinite().all().item<bool>());
        Assert.True(first.equal(second).all().item<bool>());
        // What stays is the U-Net's own: embeddings, skip connections, block outputs (29 here); without the layers'
        // scopes every intermediate of every layer stayed too (318 here).
        long left = Left(() => model.Predict(sample, conditioning));
        Assert.True(left < 45, $"{left} tensors were left in the caller's scope");
    }
}
