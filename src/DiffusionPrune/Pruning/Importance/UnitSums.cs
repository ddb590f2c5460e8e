using static TorchSharp.torch;

namespace DiffusionPrune.Pruning.Importance;

/// <summary>How a criterion scales each group's raw per-unit sums before they are compared across groups.</summary>
public enum UnitNormalization
{
    /// <summary>The raw sum over the unit's coupled weights. Only comparable within one group.</summary>
    None,

    /// <summary>
    /// The raw sum divided by <see cref="UnitGroup.ParametersPerUnit"/>: the mean per weight. A unit of a
    /// 64-input conv carries twice the weights of a 32-input one, so its raw L1 is about twice as large
    /// for the same weight scale; dividing by the count removes that fan-in bias from a global ranking.
    /// A per-group constant, so it never changes the order within a group.
    /// </summary>
    PerParameter,

    /// <summary>The raw sum divided by the group's mean raw sum (each group then averages 1; a group of zeros stays 0).</summary>
    GroupMean,
}

/// <summary>Sums of an element-wise quantity over each unit's slices of every coupled tensor (shared by magnitude and Taylor).</summary>
internal static class UnitSums
{
    /// <summary>
    /// For each unit u of <paramref name="group"/>: the sum of <paramref name="values"/>(c) over the
    /// slices <c>c.Indices([u])</c> along <c>c.Dim</c> of every coupled tensor c. <paramref name="values"/>
    /// returns a tensor of c's shape; it is created inside this method's dispose scope.
    /// Accumulated in float64.
    /// </summary>
    public static double[] Of(UnitGroup group, Func<CoupledTensor, Tensor> values)
    {
        var sums = new double[group.Units];
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        foreach (var coupled in group.Coupled)
        {
            var v = values(coupled).to_type(ScalarType.Float64);
            long[] otherDims = Enumerable.Range(0, (int)v.dim()).Where(d => d != coupled.Dim).Select(d => (long)d).ToArray();
            var perSlice = otherDims.Length == 0 ? v : v.sum(otherDims);
            double[] slice = perSlice.cpu().data<double>().ToArray();
            for (int unit = 0; unit < group.Units; unit++)
                foreach (long index in coupled.Indices([unit]))
                    sums[unit] += slice[index];
        }
        return sums;
    }

    /// <summary>Applies <paramref name="normalization"/> to one group's raw sums and rounds to float scores.</summary>
    public static float[] Normalize(UnitGroup group, double[] raw, UnitNormalization normalization)
    {
        double divisor = normalization switch
        {
            UnitNormalization.None => 1.0,
            UnitNormalization.PerParameter => group.ParametersPerUnit,
            UnitNormalization.GroupMean => raw.Average(),
            _ => throw new ArgumentOutOfRangeException(nameof(normalization), normalization, null),
        };
        if (divisor == 0) divisor = 1.0; // every unit is 0: keep the zeros
        return raw.Select(r => (float)(r / divisor)).ToArray();
    }
}
