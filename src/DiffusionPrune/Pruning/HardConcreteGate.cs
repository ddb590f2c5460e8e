using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>How a unit's logit becomes its gate during mask optimisation.</summary>
public enum GateMode
{
    /// <summary>Hard-concrete (Louizos et al. 2018, as EcoDiff): stretched, clamped, noisy sigmoid; reaches exact 0 and 1.</summary>
    HardConcrete,

    /// <summary>gate = sigmoid(lambda), no noise: never exactly 0 or 1.</summary>
    Sigmoid,
}

/// <summary>The sparsity term R(lambda) of the EcoDiff objective.</summary>
public enum SparsityRegularizer
{
    /// <summary>Expected number of non-zero gates, sum_i P(gate_i != 0) (averaged over units in the loss).</summary>
    L0,

    /// <summary>sum_i |lambda_i|, as the public EcoDiff configs' L1 option (averaged over units in the loss).</summary>
    L1,
}

/// <summary>
/// The learnable gate of one unit group: one logit lambda per unit, higher = keep.
/// <para>
/// Training sample (hard-concrete): u ~ U(0, 1), s = sigmoid((log(u + d) − log(1 − u + d) + lambda) / beta),
/// gate = clamp(s·(zeta − gamma) + gamma, 0, 1), with beta 0.83, gamma −0.1, zeta 1.1.
/// The damping d bounds the logistic noise to ±log((1 + d) / d); we use d = 0.3 (±1.47). At the initial
/// logit 3 a unit is then sampled below 1 about 13% of the time, so the reconstruction gradient reaches it
/// from the first iteration, while a logit of −3.5 or less always samples exactly 0 (the unit is really off).
/// Smaller d (noisier) explores more but makes the loss noisier on small calibration sets.
/// </para>
/// <para>
/// Evaluation gate: clamp(sigmoid(lambda)·(zeta − gamma) + gamma, 0, 1). <see cref="GateMode.Sigmoid"/> uses
/// sigmoid(lambda) for both.
/// </para>
/// <para>
/// Sign convention: pruning drives lambda DOWN. The L0 term is the probability of a non-zero gate,
/// sigmoid(lambda − beta·log(−gamma / zeta)), whose gradient always pushes lambda down. The L1 term is
/// |lambda| as in the public EcoDiff code (<c>reg: 1</c>): it pulls the high initial logits towards 0 and no
/// further, so pruned units end near or below 0 only where the reconstruction term lets them; binarisation
/// ranks logits (top-k), so only their order matters.
/// </para>
/// </summary>
public sealed class HardConcreteGate : IDisposable
{
    /// <summary>beta, the temperature of the concrete distribution.</summary>
    public const double Temperature = 0.83;
    public const double Gamma = -0.1;
    public const double Zeta = 1.1;
    public const double DefaultDamping = 0.3;

    /// <summary>beta·log(−gamma / zeta): the shift in P(gate != 0) = sigmoid(lambda − shift).</summary>
    public static readonly double L0Shift = Temperature * Math.Log(-Gamma / Zeta);

    public HardConcreteGate(int units, double initialLogit = 3.0, GateMode mode = GateMode.HardConcrete, double damping = DefaultDamping, Device? device = null)
    {
        if (units < 1) throw new ArgumentOutOfRangeException(nameof(units), "A gate needs at least one unit.");
        if (!(damping > 0) || damping > 1)
            throw new ArgumentOutOfRangeException(nameof(damping), $"The noise damping must lie in (0, 1] (got {damping}); 0.1-0.5 is the useful range.");
        if (!double.IsFinite(initialLogit)) throw new ArgumentOutOfRangeException(nameof(initialLogit), "The initial logit must be finite.");
        Mode = mode;
        Damping = damping;
        Logits = new Parameter(full([units], initialLogit, ScalarType.Float32, device), requires_grad: true);
        Logits.DetachFromDisposeScope(); // the caller's scope must not free the logits; Dispose does
    }

    /// <summary>lambda, one per unit. A leaf with requires_grad.</summary>
    public Parameter Logits { get; }
    public GateMode Mode { get; }
    public double Damping { get; }
    public int Units => (int)Logits.shape[0];

    /// <summary>A training gate with its graph back to <see cref="Logits"/>; the noise comes from <paramref name="generator"/>.</summary>
    public Tensor Sample(Generator? generator)
    {
        if (Mode == GateMode.Sigmoid) return Logits.sigmoid();
        var u = rand([Units], ScalarType.Float32, Logits.device, generator: generator);
        return SampleFromUniform(u);
    }

    /// <summary>The hard-concrete gate for given uniform noise <paramref name="u"/> (same shape as the logits).</summary>
    public Tensor SampleFromUniform(Tensor u)
    {
        if (Mode == GateMode.Sigmoid) return Logits.sigmoid();
        using var scope = NewDisposeScope();
        var noise = (u + Damping).log() - (1.0 - u + Damping).log();
        var s = ((noise + Logits) / Temperature).sigmoid();
        return (s * (Zeta - Gamma) + Gamma).clamp(0.0, 1.0).MoveToOuterDisposeScope();
    }

    /// <summary>The deterministic gate used at evaluation (no graph).</summary>
    public Tensor Deterministic()
    {
        using var noGrad = no_grad();
        return Mode == GateMode.Sigmoid
            ? Logits.sigmoid()
            : (Logits.sigmoid() * (Zeta - Gamma) + Gamma).clamp(0.0, 1.0);
    }

    /// <summary>P(gate_i != 0) per unit (with graph): sigmoid(lambda − beta·log(−gamma/zeta)); sigmoid(lambda) in sigmoid mode.</summary>
    public Tensor KeepProbability() =>
        Mode == GateMode.Sigmoid ? Logits.sigmoid() : (Logits - L0Shift).sigmoid();

    /// <summary>The L0 expectation sum_i P(gate_i != 0), with graph.</summary>
    public Tensor ExpectedL0() => KeepProbability().sum();

    /// <summary>sum_i |lambda_i|, with graph.</summary>
    public Tensor L1() => Logits.abs().sum();

    /// <summary>The regulariser <paramref name="kind"/> summed over this gate's units, with graph.</summary>
    public Tensor Regularizer(SparsityRegularizer kind) => kind == SparsityRegularizer.L0 ? ExpectedL0() : L1();

    /// <summary>P(gate != 0) of one logit, in double precision (for reports and tests).</summary>
    public static double KeepProbability(double logit, GateMode mode = GateMode.HardConcrete) =>
        1.0 / (1.0 + Math.Exp(-(mode == GateMode.Sigmoid ? logit : logit - L0Shift)));

    public void Dispose() => Logits.Dispose();
}
