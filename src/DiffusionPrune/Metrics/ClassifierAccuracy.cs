using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Metrics;

/// <summary>
/// How often a classifier recognises the class a conditional model was asked to draw: the fraction of
/// samples whose arg-max logit equals the requested label.
/// </summary>
public static class ClassifierAccuracy
{
    /// <param name="logits">[N, classes] (e.g. [N, 10] for digits)</param>
    /// <param name="requestedLabels">[N] integer labels (an int[] converts implicitly)</param>
    public static double Compute(Tensor logits, Tensor requestedLabels)
    {
        if (logits.dim() != 2 || logits.shape[0] == 0)
            throw new ArgumentException($"Logits must be [N, classes] with N > 0; got shape [{string.Join(", ", logits.shape)}].", nameof(logits));
        if (requestedLabels.dim() != 1 || requestedLabels.shape[0] != logits.shape[0])
            throw new ArgumentException($"Labels must be [N] with N = {logits.shape[0]} to match the logits; got shape [{string.Join(", ", requestedLabels.shape)}].", nameof(requestedLabels));
        using var scope = torch.NewDisposeScope();
        var predicted = logits.argmax(1);
        return predicted.eq(requestedLabels.to_type(ScalarType.Int64).to(predicted.device))
            .to_type(ScalarType.Float64).mean().item<double>();
    }

}
