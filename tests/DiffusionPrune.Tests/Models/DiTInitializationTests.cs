using DiffusionPrune.Models;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Models;

/// <summary>The DiT training initialisation (adaLN-Zero) that `dprune train --arch dit` applies to a fresh model.</summary>
public class DiTInitializationTests
{
    [Fact]
    public void Fresh_DiT_starts_as_identity_blocks_and_a_zero_prediction()
    {
        manual_seed(4);
        using var model = new DiTTransformer2DModel(new DiTConfig
        {
            NumAttentionHeads = 2, AttentionHeadDim = 8, InChannels = 1, NumLayers = 2,
            SampleSize = 8, PatchSize = 4, NumEmbedsAdaNorm = 5, NormNumGroups = 1,
        });
        model.InitializeForTraining();
        model.eval();
        using var noGrad = no_grad();

        // adaLN-Zero: every modulation layer and the output layer are zero, so the model predicts exactly 0.
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
        foreach (var name in new[] { "transformer_blocks.0.norm1.linear", "transformer_blocks.1.norm1.linear", "proj_out_1", "proj_out_2" })
            Assert.Equal(0.0, ((Linear)modules[name]).weight.abs().max().item<float>());
        var output = model.Forward(randn(3, 1, 8, 8), tensor(new long[] { 10, 500, 999 }), tensor(new long[] { 0, 4, 5 }));
        Assert.Equal(0.0, output.abs().max().item<float>());

        // The rest is initialised, not zero: Xavier-uniform attention weights within their bound, N(0, 0.02) label tables.
        var toQ = ((Linear)modules["transformer_blocks.0.attn1.to_q"]).weight;
        double bound = Math.Sqrt(6.0 / (toQ.shape[0] + toQ.shape[1]));
        Assert.InRange(toQ!.abs().max().item<float>(), 0.5 * bound, bound);
        Assert.Equal(0.0, ((Linear)modules["transformer_blocks.0.attn1.to_q"]).bias!.abs().max().item<float>());
        var table = ((Embedding)modules["transformer_blocks.0.norm1.emb.class_embedder.embedding_table"]).weight!;
        Assert.InRange(table.std().item<float>(), 0.01, 0.03);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Shared_query_key_init_starts_every_key_projection_equal_to_its_query_projection(bool shared)
    {
        manual_seed(5);
        using var model = new DiTTransformer2DModel(new DiTConfig
        {
            NumAttentionHeads = 2, AttentionHeadDim = 8, InChannels = 1, NumLayers = 3,
            SampleSize = 8, PatchSize = 4, NumEmbedsAdaNorm = 5, NormNumGroups = 1,
        });
        model.InitializeForTraining(sharedQueryKey: shared);
        using var noGrad = no_grad();
        foreach (var block in model.Blocks.OfType<DiTBlock>())
        {
            var q = block.Attn1.ToQ.weight!;
            var k = block.Attn1.ToK.weight!;
            Assert.Equal(shared, q.allclose(k, rtol: 0, atol: 0));
            Assert.Equal(0.0, block.Attn1.ToK.bias!.abs().max().item<float>());
        }
    }
}
