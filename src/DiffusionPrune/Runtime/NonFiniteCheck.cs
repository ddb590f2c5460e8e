using static TorchSharp.torch;

namespace DiffusionPrune.Runtime;

/// <summary>A loss or gradient became NaN or infinite during a step: a one-line, user-facing error.</summary>
public sealed class NonFiniteValueException(string message) : Exception(message);

/// <summary>
/// Fail-fast checks for training, pruning and distillation steps: at the first non-finite loss or gradient, stop with
/// one line naming the stage, the step and the parameter group, and pointing at <c>dprune doctor</c>. A NaN is a bug
/// to find (a wrong kernel, a bad setting), never a value to carry on with.
/// </summary>
public static class NonFiniteCheck
{
    /// <summary>Throws when <paramref name="loss"/> is NaN or infinite.</summary>
    public static void Loss(string stage, int step, double loss, string? detail = null)
    {
        if (double.IsFinite(loss)) return;
        throw new NonFiniteValueException($"{stage} step {step}: the {detail ?? "loss"} is {Describe(loss)}. " +
            "Stopped before it spreads; run `dprune doctor` to check this CPU's kernels, or lower the learning rate.");
    }

    /// <summary>
    /// Throws when any gradient is NaN or infinite, naming the first such group. One native sync for the common
    /// all-finite case; the groups are searched only after a failure. Null gradients (unused parameters) are skipped.
    /// </summary>
    public static void Gradients(string stage, int step, IEnumerable<(string Group, Tensor? Gradient)> gradients)
    {
        var present = gradients.Where(g => g.Gradient is not null).Select(g => (g.Group, Gradient: g.Gradient!)).ToList();
        if (present.Count == 0) return;
        using var scope = NewDisposeScope();
        var finite = stack(present.Select(g => isfinite(g.Gradient).all()).ToArray());
        if (finite.all().item<bool>()) return;
        var flags = finite.data<bool>().ToArray();
        int first = Array.IndexOf(flags, false);
        var bad = present[first];
        string kind = isnan(bad.Gradient).any().item<bool>() ? "NaN" : "infinite";
        throw new NonFiniteValueException($"{stage} step {step}: the gradient of group '{bad.Group}' is {kind}" +
            (flags.Count(f => !f) > 1 ? $" (and {flags.Count(f => !f) - 1} more groups)" : "") +
            ". Stopped before it spreads; run `dprune doctor` to check this CPU's kernels.");
    }

    private static string Describe(double value) => double.IsNaN(value) ? "NaN" : "infinite";
}
