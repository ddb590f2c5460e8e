using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace DiffusionPrune.Runtime;

/// <summary>One op checked: the float32 forward output and input gradients against float64 from the same data.</summary>
/// <param name="ForwardError">max |float32 - float64| / max |float64| of the output (NaN when the float32 output has NaN).</param>
/// <param name="BackwardError">The same over every input's gradient, the largest of them.</param>
public sealed record OpCheckResult(string Op, string Shape, double ForwardError, double BackwardError, double Tolerance)
{
    // Written as !(e <= tol) so that a NaN error fails.
    public bool Passed => ForwardError <= Tolerance && BackwardError <= Tolerance;
}

/// <summary>The results of one <see cref="OpCheck"/> run, with how long it took.</summary>
public sealed record OpCheckReport(IReadOnlyList<OpCheckResult> Results, int Threads, TimeSpan Elapsed)
{
    public bool Passed => Results.All(r => r.Passed);
    public IEnumerable<OpCheckResult> Failures => Results.Where(r => !r.Passed);

    /// <summary>One line naming the failing ops, or saying all passed.</summary>
    public string Summary => Passed
        ? $"{Results.Count} op checks passed (largest error {Results.Max(r => Math.Max(r.ForwardError, r.BackwardError)):E1})"
        : $"{Failures.Count()} of {Results.Count} op checks failed: " + string.Join(", ", Failures.Take(6).Select(f => $"{f.Op} {f.Shape} (fwd {f.ForwardError:E1}, bwd {f.BackwardError:E1})"))
          + (Failures.Count() > 6 ? ", ..." : "");
}

/// <summary>
/// Checks the ops our models use, forward and backward, in float32 against float64 on the same inputs. A CPU
/// whose vector kernels compute wrong results (seen on an AVX-512 AMD EPYC, where oneDNN's convolution backward for
/// narrow layers returned garbage or NaN) fails it; a correct one stays within float32 rounding (~1e-6 relative).
/// Draws from its own generator, never the global one.
/// </summary>
public static class OpCheck
{
    /// <summary>Relative error above which an op counts as wrong: float32 rounding is ~1e-6 here, faults were ~0.3-1 or NaN.</summary>
    public const double Tolerance = 1e-4;

    private const int Batch = 4;

    /// <summary>Convolutions 3x3 of the shapes that failed on the faulty host, plus the default models' widths.</summary>
    private static readonly (int In, int Out, int Size)[] QuickConvolutions =
    [
        (16, 1, 32), (1, 16, 32), (3, 3, 32), (5, 7, 16), (6, 6, 16), (8, 8, 16), (12, 12, 8), (13, 13, 8),
        (32, 32, 32), (64, 64, 16), (128, 128, 8),
    ];

    /// <summary>The guard's check, run before the first training or pruning step: narrow, odd and default convolutions.</summary>
    public static OpCheckReport RunQuick() => Run(QuickProbes());

    /// <summary><c>dprune doctor</c>'s check: every op our models use, forward and backward.</summary>
    public static OpCheckReport RunFull() => Run(QuickProbes().Concat(FullProbes()));

    private static OpCheckReport Run(IEnumerable<Probe> probes)
    {
        var watch = Stopwatch.StartNew();
        var results = new List<OpCheckResult>();
        var generator = new Generator(20261202);
        foreach (var probe in probes)
            results.Add(Measure(probe, generator));
        return new OpCheckReport(results, torch.get_num_threads(), watch.Elapsed);
    }

    private sealed record Probe(string Op, string Shape, long[][] InputShapes, Func<Tensor[], Tensor> Apply, double Tolerance = Tolerance);

    private static IEnumerable<Probe> QuickProbes() =>
        QuickConvolutions.Select(c => Conv(c.In, c.Out, c.Size, kernel: 3, stride: 1));

    private static IEnumerable<Probe> FullProbes()
    {
        yield return Conv(2, 2, 32, 3, 1);
        yield return Conv(4, 4, 32, 3, 1);
        yield return Conv(32, 64, 16, 3, 1);
        yield return Conv(64, 128, 8, 3, 1);
        yield return Conv(64, 32, 16, kernel: 1, stride: 1);
        yield return Conv(32, 32, 32, kernel: 3, stride: 2);
        yield return Conv(1, 128, 32, kernel: 8, stride: 8); // a DiT's patch embedding
        yield return new Probe("group_norm", "[4, 64, 16, 16], 32 groups", [[Batch, 64, 16, 16], [64], [64]],
            t => F.group_norm(t[0], 32, t[1], t[2], 1e-5));
        yield return new Probe("layer_norm", "[4, 16, 128]", [[Batch, 16, 128], [128], [128]],
            t => F.layer_norm(t[0], [128], t[1], t[2], 1e-6));
        yield return new Probe("linear", "[4, 16, 128] x [512, 128]", [[Batch, 16, 128], [512, 128], [512]],
            t => F.linear(t[0], t[1], t[2]));
        yield return new Probe("attention", "[4, 4, 64, 32] (sdpa)", [[Batch, 4, 64, 32], [Batch, 4, 64, 32], [Batch, 4, 64, 32]],
            t => F.scaled_dot_product_attention(t[0], t[1], t[2]));
        yield return new Probe("softmax", "[4, 4, 64, 64]", [[Batch, 4, 64, 64]], t => F.softmax(t[0], -1));
        yield return new Probe("silu", "[4, 64, 16, 16]", [[Batch, 64, 16, 16]], t => F.silu(t[0]));
        yield return new Probe("gelu", "[4, 16, 512]", [[Batch, 16, 512]], t => F.gelu(t[0]));
        yield return new Probe("gelu(tanh)", "[4, 16, 512]", [[Batch, 16, 512]], t => F.gelu(t[0], TorchSharp.Modules.GELU.Approximate.tanh));
        yield return new Probe("mish", "[4, 64, 16, 16]", [[Batch, 64, 16, 16]], t => F.mish(t[0]));
        yield return new Probe("upsample nearest x2", "[4, 64, 8, 8]", [[Batch, 64, 8, 8]],
            t => F.interpolate(t[0], scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest));
        yield return new Probe("avg_pool2d", "[4, 64, 16, 16]", [[Batch, 64, 16, 16]], t => F.avg_pool2d(t[0], 2, 2));
    }

    private static Probe Conv(int inChannels, int outChannels, int size, int kernel, int stride)
    {
        long padding = stride == kernel ? 0 : kernel / 2;
        return new Probe("conv2d", $"{inChannels}->{outChannels} {kernel}x{kernel}/{stride} at {size}x{size}",
            [[Batch, inChannels, size, size], [outChannels, inChannels, kernel, kernel], [outChannels]],
            t => F.conv2d(t[0], t[1], t[2], strides: [stride, stride], padding: [padding, padding]));
    }

    private static OpCheckResult Measure(Probe probe, Generator generator)
    {
        using var scope = NewDisposeScope();
        // Inputs of unit scale; weights (second input on) scaled like a default init so outputs stay O(1).
        var sources = probe.InputShapes.Select((shape, i) =>
        {
            var x = randn(shape, ScalarType.Float64, generator: generator);
            if (i > 0 && shape.Length > 1) x /= Math.Sqrt(shape.Skip(1).Aggregate(1L, (a, b) => a * b));
            return x;
        }).ToArray();

        (Tensor Output, Tensor[] Grads) Evaluate(ScalarType type, Tensor? upstream)
        {
            var inputs = sources.Select(s => s.to(type).requires_grad_()).ToArray();
            var output = probe.Apply(inputs);
            upstream ??= randn(output.shape, ScalarType.Float64, generator: generator);
            var grads = torch.autograd.grad([output], inputs, [upstream.to(type)]);
            return (output.detach(), grads.Select(g => g.detach()).ToArray());
        }

        var upstreamGrad = randn(probe.Apply(sources).shape, ScalarType.Float64, generator: generator);
        var (reference, referenceGrads) = Evaluate(ScalarType.Float64, upstreamGrad);
        var (output32, grads32) = Evaluate(ScalarType.Float32, upstreamGrad);
        double forward = RelativeError(output32, reference);
        double backward = grads32.Zip(referenceGrads).Select(p => RelativeError(p.First, p.Second))
            .Aggregate(0.0, (a, e) => double.IsNaN(a) || double.IsNaN(e) ? double.NaN : Math.Max(a, e));
        return new OpCheckResult(probe.Op, probe.Shape, forward, backward, probe.Tolerance);
    }

    private static double RelativeError(Tensor value, Tensor reference)
    {
        var v = value.to(ScalarType.Float64);
        if (!torch.isfinite(v).all().item<bool>()) return double.NaN;
        double scale = Math.Max(reference.abs().max().item<double>(), 1e-6);
        return (v - reference).abs().max().item<double>() / scale;
    }
}
