using DiffusionPrune.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Metrics;

public class ClassifierAccuracyTests
{
    [Fact]
    public void CountsArgMaxMatchesWithRequestedLabels()
    {
        using var scope = torch.NewDisposeScope();
        var logits = torch.zeros(4, 10);
        logits[0, 3] = 5;   // predicts 3
        logits[1, 7] = 2;   // predicts 7
        logits[2, 0] = 1;   // predicts 0
        logits[3, 9] = 4;   // predicts 9

        Assert.Equal(0.75, ClassifierAccuracy.Compute(logits, new[] { 3, 7, 0, 1 }));
        Assert.Equal(0.0, ClassifierAccuracy.Compute(logits, torch.tensor(new long[] { 1, 1, 1, 1 })));
    }

    [Fact]
    public void MismatchedLabelCount_Throws()
    {
        using var scope = torch.NewDisposeScope();
        Assert.Throws<ArgumentException>(() => ClassifierAccuracy.Compute(torch.zeros(4, 10), new[] { 1, 2 }));
    }
}
