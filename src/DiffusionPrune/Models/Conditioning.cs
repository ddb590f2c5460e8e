using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>
/// Everything a denoiser is conditioned on besides the noisy sample, as diffusers' forward arguments name it. A model
/// takes what its family uses and rejects the rest with a message (<see cref="RejectUnused"/>), so a caller that
/// passes text conditioning to a class-conditional model learns it at once instead of getting a silently
/// unconditioned result.
/// </summary>
/// <param name="Timestep">A scalar, [1] or [B] timestep (diffusers' <c>timestep</c>).</param>
/// <param name="ClassLabels">Class indices [B] (or, for <c>class_embed_type</c> "identity", ready-made embeddings [B, D]).</param>
/// <param name="EncoderHiddenStates">Text-encoder states [B, tokens, D] for cross-attention (<c>encoder_hidden_states</c>).</param>
/// <param name="EncoderAttentionMask">[B, tokens] with 1 for tokens to attend to and 0 for padding (<c>encoder_attention_mask</c>).</param>
/// <param name="AddedConditions">diffusers' <c>added_cond_kwargs</c> (e.g. SDXL's <c>text_embeds</c>, <c>time_ids</c>).</param>
public sealed record Conditioning(
    Tensor Timestep,
    Tensor? ClassLabels = null,
    Tensor? EncoderHiddenStates = null,
    Tensor? EncoderAttentionMask = null,
    IReadOnlyDictionary<string, Tensor>? AddedConditions = null)
{
    /// <summary>The same conditioning at another timestep (a sampler's loop keeps everything else).</summary>
    public Conditioning At(Tensor timestep) => this with { Timestep = timestep };

    /// <summary>Throws a one-line <see cref="ArgumentException"/> naming what <paramref name="className"/> does not take.</summary>
    public void RejectUnused(string className, bool classLabels = false, bool encoderHiddenStates = false, bool addedConditions = false)
    {
        if (!classLabels && ClassLabels is not null)
            throw new ArgumentException($"This {className} has no class embedding; do not pass class_labels.");
        if (!encoderHiddenStates && (EncoderHiddenStates is not null || EncoderAttentionMask is not null))
            throw new ArgumentException($"{className} has no cross-attention: encoder_hidden_states and encoder_attention_mask are for " +
                "text-conditioned models (UNet2DConditionModel).");
        if (!addedConditions && AddedConditions is { Count: > 0 })
            throw new ArgumentException($"{className} takes no added conditions (got {string.Join(", ", AddedConditions.Keys)}).");
    }
}
