using System.Text.Json.Nodes;
using System.Text.Json;
using DiffusionPrune.Data;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Training;
using TorchSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Metrics;

/// <summary>
/// The project's MNIST classifier whose penultimate layer gives the features for FID-proxy, KID and
/// precision/recall (the standard practice for MNIST, where Inception features mean little).
/// Input: [N, 1, 32, 32] in [-1, 1]. Four 3x3 convolutions (32x32 -> 16x16 -> 8x8), 2x2 average pooling
/// to 4x4 (the spatial layout of a digit matters: global pooling loses it), a 128-wide feature layer,
/// a 10-way head.
/// </summary>
public sealed class FeatureNet : nn.Module<Tensor, Tensor>
{
    public const string ClassName = "DPruneFeatureNet";
    public const string WeightsName = "featurenet.safetensors";
    public const string ReferenceStatsName = "reference_test_stats.safetensors";
    public const int FeatureDim = 128;

    private readonly Conv2d conv1;
    private readonly Conv2d conv2;
    private readonly Conv2d conv3;
    private readonly Conv2d conv4;
    private readonly Linear fc;
    private readonly Linear head;

    public FeatureNet() : base(nameof(FeatureNet))
    {
        conv1 = nn.Conv2d(1, 32, 3, padding: 1);
        conv2 = nn.Conv2d(32, 64, 3, stride: 2, padding: 1);
        conv3 = nn.Conv2d(64, 64, 3, padding: 1);
        conv4 = nn.Conv2d(64, 128, 3, stride: 2, padding: 1);
        fc = nn.Linear(128 * 4 * 4, FeatureDim);
        head = nn.Linear(FeatureDim, 10);
        RegisterComponents();
    }

    /// <summary>Penultimate features [N, 128] (after ReLU).</summary>
    public Tensor Features(Tensor images)
    {
        var x = nn.functional.relu(conv1.call(images));
        x = nn.functional.relu(conv2.call(x));
        x = nn.functional.relu(conv3.call(x));
        x = nn.functional.relu(conv4.call(x));
        x = nn.functional.avg_pool2d(x, 2, 2).flatten(1);
        return nn.functional.relu(fc.call(x));
    }

    public override Tensor forward(Tensor images) => head.call(Features(images));

    /// <summary>Features of a large batch, computed in chunks without gradients.</summary>
    public Tensor FeaturesOf(Tensor images, int chunk = 500)
    {
        using var noGrad = no_grad();
        var parts = new List<Tensor>();
        for (long i = 0; i < images.shape[0]; i += chunk)
            parts.Add(Features(images[(int)i..(int)Math.Min(i + chunk, images.shape[0])]));
        return cat(parts);
    }

    public Tensor LogitsOf(Tensor images, int chunk = 500)
    {
        using var noGrad = no_grad();
        var parts = new List<Tensor>();
        for (long i = 0; i < images.shape[0]; i += chunk)
            parts.Add(forward(images[(int)i..(int)Math.Min(i + chunk, images.shape[0])]));
        return cat(parts);
    }

    /// <summary>The committed feature network: <c>samples/models/featurenet</c> in the repository.</summary>
    public static string? DefaultFolder()
    {
        string? root = MnistDataset.FindRepositoryRoot(AppContext.BaseDirectory) ?? MnistDataset.FindRepositoryRoot(Directory.GetCurrentDirectory());
        return root is null ? null : Path.Combine(root, "samples", "models", "featurenet");
    }

    public static FeatureNet Load(string? folder = null)
    {
        folder ??= DefaultFolder() ?? throw new DirectoryNotFoundException("Cannot find samples/models/featurenet; pass the feature network folder explicitly.");
        string weights = Path.Combine(folder, WeightsName);
        if (!File.Exists(weights))
            throw new FileNotFoundException($"No feature network at '{weights}'. Train it with: dprune featurenet --output {folder}", weights);
        var net = new FeatureNet();
        DiffusersModelLoader.LoadStrict(net, DiffusersModelLoader.ReadSafetensors(weights), folder);
        net.eval();
        return net;
    }

    public void Save(string folder, JsonObject card)
    {
        Directory.CreateDirectory(folder);
        SafetensorsWriter.Write(Path.Combine(folder, WeightsName), state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal));
        card["_class_name"] = ClassName;
        card["feature_dim"] = FeatureDim;
        File.WriteAllText(Path.Combine(folder, "config.json"), card.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}

/// <summary>Result of training the feature network.</summary>
public sealed record FeatureNetTraining(double TestAccuracy, double TrainSeconds, int Epochs);

/// <summary>Trains <see cref="FeatureNet"/> on the MNIST train split (Adam, random 2-pixel shifts), seeded.</summary>
public static class FeatureNetTrainer
{
    public static (FeatureNet net, FeatureNetTraining result) Train(MnistDataset data, int epochs = 8, int batchSize = 128, double learningRate = 2e-3,
        long seed = 0, Action<string>? log = null)
    {
        manual_seed(seed);
        var net = new FeatureNet();
        var optimizer = new DiffusionPrune.Training.AdamW(net.named_parameters());
        var stopwatch = System.Diagnostics.Stopwatch.StartNew();
        int stepsPerEpoch = (data.Train.Count + batchSize - 1) / batchSize;
        int step = 0, total = epochs * stepsPerEpoch;
        for (int epoch = 0; epoch < epochs; epoch++)
        {
            net.train();
            double lossSum = 0;
            int batches = 0;
            foreach (var (images, labels) in data.Train.Batches(batchSize, (int)(seed * 1000 + epoch)))
            {
                int current = step;
                lossSum += GcPause.Run(() => // implicit scalars must outlive the native calls that read them
                {
                    using var scope = NewDisposeScope();
                    var generator = new Generator((ulong)(seed * 7919 + current + 1));
                    var shifted = RandomShift(images, 2, generator);
                    optimizer.ZeroGrad();
                    var loss = nn.functional.cross_entropy(net.call(shifted), labels);
                    loss.backward();
                    // Cosine decay over the whole run.
                    double lr = learningRate * 0.5 * (1 + Math.Cos(Math.PI * current / total));
                    optimizer.Step(lr);
                    return (double)loss.item<float>();
                });
                batches++;
                step++;
                images.Dispose();
                labels.Dispose();
                NativeMemory.Trim();
            }
            log?.Invoke($"epoch {epoch + 1}/{epochs}: loss {lossSum / batches:F4}");
        }
        net.eval();
        double accuracy = TestAccuracy(net, data);
        optimizer.Dispose();
        return (net, new FeatureNetTraining(accuracy, stopwatch.Elapsed.TotalSeconds, epochs));
    }

    public static double TestAccuracy(FeatureNet net, MnistDataset data)
    {
        using var scope = NewDisposeScope();
        var logits = net.LogitsOf(data.Test.All());
        return ClassifierAccuracy.Compute(logits, data.Test.AllLabels());
    }

    /// <summary>Shifts each image by up to ±max pixels (background fill -1): cheap augmentation.</summary>
    private static Tensor RandomShift(Tensor images, int max, Generator generator)
    {
        long n = images.shape[0];
        var padded = nn.functional.pad(images, [max, max, max, max], PaddingModes.Constant, -1);
        var offsets = randint(0, 2 * max + 1, [n, 2], generator: generator).data<long>().ToArray();
        var parts = new Tensor[n];
        for (int i = 0; i < n; i++)
        {
            long dy = offsets[2 * i], dx = offsets[2 * i + 1];
            parts[i] = padded[i..(i + 1), .., (int)dy..(int)(dy + 32), (int)dx..(int)(dx + 32)];
        }
        return cat(parts);
    }
}
