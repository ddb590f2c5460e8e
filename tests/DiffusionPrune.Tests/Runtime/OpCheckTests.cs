using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using Xunit.Abstractions;
using DiffusionPrune.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Runtime;

/// <summary>
/// The regression test for the CPU fault: this machine's kernels, as the guard leaves them, compute every op our
/// models use within float32 rounding of float64 (the faulty AVX-512 EPYC returned 0.3-1.0 relative error or NaN).
/// </summary>
[Collection(OneDnnSwitchCollection.Name)]
public class OpCheckTests(ITestOutputHelper output)
{
    [Fact]
    public void Every_op_our_models_use_matches_float64_with_the_kernels_in_use()
    {
        var status = NumericsGuard.EnsureDefault();
        output.WriteLine($"guard: {status.Detail} (workaround {(status.WorkaroundActive ? "on" : "off")})");
        var report = OpCheck.RunFull();
        foreach (var r in report.Results) output.WriteLine($"{r.Op} {r.Shape}: fwd {r.ForwardError:E2} bwd {r.BackwardError:E2}");
        Assert.True(status.Healthy, status.Detail);
        Assert.True(report.Passed, report.Summary);
        Assert.Contains(report.Results, r => r.Op == "conv2d" && r.Shape.StartsWith("16->1 ", StringComparison.Ordinal));
    }

    [Fact]
    public void With_oneDNN_off_narrow_convolutions_still_match_float64()
    {
        // The workaround's own path must be right: switch oneDNN off for a moment and run the guard's check.
        Assert.True(LibTorchContext.CanSwitchOneDnn, "libtorch's oneDNN switch was not found");
        bool before = LibTorchContext.OneDnnEnabled;
        try
        {
            LibTorchContext.OneDnnEnabled = false;
            Assert.False(LibTorchContext.OneDnnEnabled);
            var report = OpCheck.RunQuick();
            Assert.True(report.Passed, report.Summary);
        }
        finally
        {
            LibTorchContext.OneDnnEnabled = before;
        }
        Assert.Equal(before, LibTorchContext.OneDnnEnabled);
    }

    [Fact]
    public void The_doctor_report_names_the_machine_the_libraries_and_every_op()
    {
        var report = DoctorReport.Run();
        var lines = report.Lines().ToList();
        Assert.True(report.Passed, string.Join("\n", lines));
        Assert.Contains(lines, l => l.StartsWith("cpu:", StringComparison.Ordinal) && l.Length > 15);
        Assert.Contains(lines, l => l.StartsWith("libtorch:", StringComparison.Ordinal) && l.Contains("2.10"));
        Assert.Contains(lines, l => l.StartsWith("onnxruntime:", StringComparison.Ordinal) && l.Contains("1.31"));
        Assert.Contains(lines, l => l.StartsWith("threads:", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("workaround:", StringComparison.Ordinal));
        foreach (var op in new[] { "conv2d", "group_norm", "linear", "attention", "silu", "gelu", "upsample" })
            Assert.Contains(report.FullCheck.Results, r => r.Op.StartsWith(op, StringComparison.Ordinal));
    }
}

/// <summary>
/// Tests that flip a process-wide switch (libtorch's oneDNN, the collector's no-GC region) run alone, after the
/// parallel ones: a test comparing two runs bit for bit must never see oneDNN go off between them.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public class OneDnnSwitchCollection
{
    public const string Name = "process-wide switches";
}

public class GatedGroupNormTests
{
    [Fact]
    public void A_group_whose_gates_are_all_closed_gives_finite_outputs_and_gradients()
    {
        using var scope = NewDisposeScope();
        var generator = new Generator(3);
        var x = (randn([2, 8, 4, 4], generator: generator) * 1e4).requires_grad_(); // activations can be large
        // 4 groups of 2 channels; group 1 (channels 2, 3) fully closed, the others partly open.
        var gate = tensor(new float[] { 1, 0.5f, 0, 0, 1, 1, 0.2f, 0 }).requires_grad_();
        var y = GatedGroupNorm.Apply(x, gate, 4, ones(8), zeros(8), 1e-5);
        // As in a ResNet block: the gated norm's output goes through silu and is multiplied by the same gate.
        var loss = (nn.functional.silu(y) * gate.view(1, -1, 1, 1)).square().sum() + y.square().sum();
        var grads = torch.autograd.grad([loss], [x, gate]);
        Assert.True(isfinite(y).all().item<bool>());
        Assert.True(isfinite(grads[0]).all().item<bool>());
        Assert.True(isfinite(grads[1]).all().item<bool>());
    }

    [Fact]
    public void With_0_1_gates_it_equals_group_norm_over_the_kept_channels()
    {
        using var scope = NewDisposeScope();
        var x = randn([2, 4, 3, 3], generator: new Generator(5));
        var gate = tensor(new float[] { 1, 0, 1, 1 });
        var y = GatedGroupNorm.Apply(x, gate, 2, ones(4), zeros(4), 1e-5);
        var kept = x.index_select(1, tensor(new long[] { 0 }));
        var expected = nn.functional.group_norm(kept, 1, eps: 1e-5);
        Assert.True((y[.., 0..1] - expected).abs().max().item<float>() < 1e-5);
    }
}

public class NonFiniteCheckTests
{
    [Fact]
    public void A_NaN_loss_stops_with_the_stage_and_step()
    {
        var e = Assert.Throws<NonFiniteValueException>(() => NonFiniteCheck.Loss("ecodiff", 7, double.NaN));
        Assert.Contains("ecodiff step 7", e.Message);
        Assert.Contains("NaN", e.Message);
        Assert.Contains("dprune doctor", e.Message);
        Assert.DoesNotContain("\n", e.Message);
        NonFiniteCheck.Loss("ecodiff", 7, 0.25);
    }

    [Fact]
    public void A_non_finite_gradient_names_its_group()
    {
        using var scope = NewDisposeScope();
        var good = ones(3);
        var bad = tensor(new float[] { 1, float.PositiveInfinity });
        NonFiniteCheck.Gradients("train", 2, [("a", good), ("b", null)]);
        var e = Assert.Throws<NonFiniteValueException>(() =>
            NonFiniteCheck.Gradients("train", 3, [("a", good), ("down_blocks.0.resnets.0", bad), ("c", tensor(new[] { float.NaN }))]));
        Assert.Contains("train step 3", e.Message);
        Assert.Contains("'down_blocks.0.resnets.0' is infinite", e.Message);
        Assert.Contains("1 more group", e.Message);
    }
}

public class NnpackTests
{
    [Fact]
    public void Where_NNPACK_cannot_run_it_is_switched_off_and_where_it_can_it_stays_on()
    {
        bool? available = LibTorchContext.QuietNnpack();
        Assert.NotNull(available); // the symbols are in libtorch 2.10's CPU build
        Assert.Equal(available, LibTorchContext.NnpackEnabled);
        Assert.Equal(available, LibTorchContext.QuietNnpack()); // probed once
    }

    [Fact]
    public void The_decision_switches_NNPACK_off_only_where_the_probe_says_it_cannot_run()
    {
        var calls = new List<bool>();
        Assert.False(LibTorchContext.QuietNnpack(() => false, calls.Add)); // "Unsupported hardware"
        Assert.Equal([false], calls);
        calls.Clear();
        Assert.True(LibTorchContext.QuietNnpack(() => true, calls.Add));
        Assert.Empty(calls);
    }

    [Fact]
    public void Silencing_native_stderr_returns_the_value_and_restores_the_stream_after_an_exception()
    {
        Assert.Equal(42, NativeStderr.Silenced(() => 42));
        Assert.Throws<InvalidOperationException>(() => NativeStderr.Silenced<int>(() => throw new InvalidOperationException()));
        Assert.Equal(7, NativeStderr.Silenced(() => 7)); // and it works again
    }
}
