using System.Globalization;
using DiffusionPrune.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Metrics;

/// <summary>
/// A Gaussian fit of a feature set: mean [D], unbiased sample covariance [D, D] (divided by N - 1),
/// and the number of samples it came from (FID is biased by the sample count, so it travels with the fit).
/// Plain arrays rather than tensors so the record outlives any dispose scope and can be cached.
/// </summary>
public sealed record GaussianStats(double[] Mean, double[,] Covariance, int SampleCount)
{
    public const string MeanKey = "mu";
    public const string CovarianceKey = "sigma";
    public const string SampleCountKey = "sample_count";

    public int Dimension => Mean.Length;

    /// <summary>Fits features [N, D] (any float dtype; computed in float64). Needs N >= 2.</summary>
    public static GaussianStats FromFeatures(Tensor features)
    {
        RequireFeatureMatrix(features, nameof(features));
        using var scope = torch.NewDisposeScope();
        var (mean, covariance) = MeanAndCovariance(features.to_type(ScalarType.Float64));
        return FromTensors(mean, covariance, (int)features.shape[0]);
    }

    /// <summary>Mean [D] and unbiased covariance [D, D] of float64 features [N, D].</summary>
    internal static (Tensor Mean, Tensor Covariance) MeanAndCovariance(Tensor features)
    {
        long n = features.shape[0];
        var mean = features.mean([0]);
        var centred = features - mean.unsqueeze(0);
        var covariance = centred.t().matmul(centred) / (n - 1);
        return (mean, covariance);
    }

    internal static GaussianStats FromTensors(Tensor mean, Tensor covariance, int sampleCount)
    {
        int d = (int)mean.shape[0];
        double[] meanArray = mean.to_type(ScalarType.Float64).cpu().contiguous().data<double>().ToArray();
        double[] flat = covariance.to_type(ScalarType.Float64).cpu().contiguous().data<double>().ToArray();
        var cov = new double[d, d];
        Buffer.BlockCopy(flat, 0, cov, 0, flat.Length * sizeof(double));
        return new GaussianStats(meanArray, cov, sampleCount);
    }

    /// <summary>The mean as a new float64 tensor [D].</summary>
    public Tensor MeanTensor() => torch.tensor(Mean, [Mean.Length], ScalarType.Float64);

    /// <summary>The covariance as a new float64 tensor [D, D].</summary>
    public Tensor CovarianceTensor()
    {
        int d = Covariance.GetLength(0);
        var flat = new double[d * d];
        Buffer.BlockCopy(Covariance, 0, flat, 0, flat.Length * sizeof(double));
        return torch.tensor(flat, [d, d], ScalarType.Float64);
    }

    /// <summary>
    /// Writes the fit to safetensors: "mu" F64 [D], "sigma" F64 [D, D] (the names pytorch-fid uses in
    /// its .npz statistics) and the sample count in the metadata. Optional extra metadata (e.g. which
    /// images and feature extractor produced it) is stored alongside.
    /// </summary>
    public void Save(string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var scope = torch.NewDisposeScope();
        var allMetadata = new Dictionary<string, string>(StringComparer.Ordinal);
        if (metadata != null)
            foreach (var (key, value) in metadata) allMetadata[key] = value;
        allMetadata[SampleCountKey] = SampleCount.ToString(CultureInfo.InvariantCulture);
        SafetensorsWriter.Write(path, new Dictionary<string, Tensor>
        {
            [MeanKey] = MeanTensor(),
            [CovarianceKey] = CovarianceTensor(),
        }, allMetadata);
    }

    /// <summary>Reads a fit written by <see cref="Save"/>; says what is missing or inconsistent otherwise.</summary>
    public static GaussianStats Load(string path)
    {
        using var file = SafetensorsFile.Open(path);
        if (!file.Contains(MeanKey) || !file.Contains(CovarianceKey))
            throw new InvalidDataException($"'{path}' is not a Gaussian-statistics file: it needs tensors '{MeanKey}' [D] and '{CovarianceKey}' [D, D]. Recompute the reference statistics.");
        if (!file.Metadata.TryGetValue(SampleCountKey, out string? countText)
            || !int.TryParse(countText, NumberStyles.Integer, CultureInfo.InvariantCulture, out int sampleCount) || sampleCount < 2)
            throw new InvalidDataException($"'{path}' has no valid '{SampleCountKey}' metadata (an integer >= 2). Recompute the reference statistics.");
        using var scope = torch.NewDisposeScope();
        var mean = file.Read(MeanKey);
        var covariance = file.Read(CovarianceKey);
        long d = mean.dim() == 1 ? mean.shape[0] : -1;
        if (d < 1 || covariance.dim() != 2 || covariance.shape[0] != d || covariance.shape[1] != d)
            throw new InvalidDataException($"'{path}': '{MeanKey}' has shape [{string.Join(", ", mean.shape)}] and '{CovarianceKey}' [{string.Join(", ", covariance.shape)}]; expected [D] and [D, D].");
        return FromTensors(mean, covariance, sampleCount);
    }

    internal static void RequireFeatureMatrix(Tensor features, string name, int minRows = 2)
    {
        if (features.dim() != 2)
            throw new ArgumentException($"'{name}' must be a feature matrix [N, D]; got shape [{string.Join(", ", features.shape)}].", name);
        if (features.shape[0] < minRows)
            throw new ArgumentException($"'{name}' has {features.shape[0]} samples; at least {minRows} are needed.", name);
        if (!features.is_floating_point())
            throw new ArgumentException($"'{name}' must be a floating-point tensor; got {features.dtype}.", name);
    }
}
