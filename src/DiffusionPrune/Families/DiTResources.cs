using DiffusionPrune.Models;

namespace DiffusionPrune.Families;

/// <summary><see cref="DiTTransformer2DModel"/>'s resource walk from the config alone (pruned heads, neurons and blocks included).</summary>
internal static class DiTResources
{
    public static ResourceEstimate Estimate(DiTConfig c)
    {
        var t = new CostTally();
        long dim = (long)c.NumAttentionHeads * c.AttentionHeadDim;
        long p = c.PatchSize, grid = c.SampleSize / c.PatchSize, tokens = grid * grid;
        long classes = c.NumEmbedsAdaNorm!.Value;
        long outChannels = c.ResolvedOutChannels;

        // 1. patches and positions
        t.Conv(c.InChannels, dim, p, grid, grid);
        t.Tensor(tokens * dim); // + positions

        // 2. blocks
        for (int i = 0; i < c.NumLayers; i++)
        {
            string path = $"transformer_blocks.{i}";
            if (c.Structure.IsRemoved(path))
            {
                if (i == 0) Embedding(t, classes, dim, runs: false); // kept for the output layer, run there
                continue;
            }
            long heads = c.Structure.Heads($"{path}.attn1", c.NumAttentionHeads);
            long ffInner = c.Structure.FeedForward($"{path}.ff", (int)Math.Min(int.MaxValue, dim * 4));
            long inner = heads * c.AttentionHeadDim;
            Embedding(t, classes, dim, runs: true);
            t.Tensor(dim);
            t.Linear(1, dim, 6 * dim);          // norm1.linear
            t.Tensor(tokens * dim);             // layer norm
            t.Tensor(tokens * dim);             // modulation
            t.Linear(tokens, dim, inner, c.AttentionBias);
            t.Linear(tokens, dim, inner, c.AttentionBias);
            t.Linear(tokens, dim, inner, c.AttentionBias);
            t.AttentionCore(tokens, heads, c.AttentionHeadDim);
            t.Linear(tokens, inner, dim);
            t.Tensor(tokens * dim);             // gated residual
            if (c.NormElementwiseAffine) t.Weights(2 * dim);
            t.Tensor(tokens * dim);             // norm3
            t.Tensor(tokens * dim);             // modulation
            t.Linear(tokens, dim, ffInner);
            t.Tensor(tokens * ffInner);         // GELU
            t.Linear(tokens, ffInner, dim);
            t.Tensor(tokens * dim);             // gated residual
        }

        // 3. output: block 0's embedding again, modulated norm, projection, unpatchify
        Embedding(t, classes, dim, runs: true, newWeights: false);
        t.Tensor(dim);
        t.Linear(1, dim, 2 * dim);
        t.Tensor(tokens * dim);
        t.Tensor(tokens * dim);
        t.Linear(tokens, dim, p * p * outChannels);
        t.Tensor(tokens * p * p * outChannels); // unpatchified
        return t.ToEstimate(DiTConfig.ClassName, [c.SampleSize, c.SampleSize], (long)c.InChannels * c.SampleSize * c.SampleSize);
    }

    /// <summary>
    /// CombinedTimestepLabelEmbeddings: 256 sinusoidal features through a 2-layer MLP plus the label table (one row more,
    /// the null class). <paramref name="runs"/>: it runs here; <paramref name="newWeights"/>: its weights are counted here.
    /// </summary>
    private static void Embedding(CostTally t, long classes, long dim, bool runs, bool newWeights = true)
    {
        const long features = CombinedTimestepLabelEmbeddings.TimestepFeatureDim;
        if (newWeights) t.Weights((classes + 1) * dim);
        if (!runs)
        {
            t.Weights(features * dim + dim + dim * dim + dim);
            return;
        }
        t.Tensor(features);
        t.Linear(1, features, dim, sharedWeights: !newWeights);
        t.Tensor(dim);
        t.Linear(1, dim, dim, sharedWeights: !newWeights);
        t.Tensor(dim); // + the label embedding
    }
}
