using System.Globalization;
using System.Text.Json.Nodes;
using DiffusionPrune.Batch;
using DiffusionPrune.Export;

namespace DiffusionPrune.Studio.Batch;

/// <summary>
/// A batch plan's settings as the Batch page's form and the API's batch job give them: everything but the models (which
/// are picked from the catalog) and the output (the job's own folder). The defaults are <c>samples/plans/quick.json</c>'s,
/// small enough for a CPU. <see cref="ToPlan"/> writes them as a plan (samples/plans/README.md) the core validates.
/// </summary>
public sealed record BatchSettings
{
    /// <summary>Pruning methods, from <see cref="BatchPlan.KnownMethods"/>.</summary>
    public IReadOnlyList<string> Methods { get; init; } = ["magnitude", "random"];

    /// <summary>Fractions of the parameters to remove, each strictly between 0 and 1.</summary>
    public IReadOnlyList<double> Targets { get; init; } = [0.2];

    /// <summary>Calibration steps of the pruning criteria.</summary>
    public int PruneSteps { get; init; } = 10;

    /// <summary>EcoDiff's (and learnable depth's) iterations.</summary>
    public int Iterations { get; init; } = 100;

    /// <summary>Calibration samples.</summary>
    public int Calibration { get; init; } = 16;

    /// <summary>The pruning seed.</summary>
    public long PruneSeed { get; init; }

    /// <summary>Images sampled per evaluation (of every item, the original too).</summary>
    public int EvalSamples { get; init; } = 100;

    /// <summary>DDIM steps per evaluation image.</summary>
    public int EvalSteps { get; init; } = 10;

    /// <summary>The evaluation seed (the same noise for every item).</summary>
    public long EvalSeed { get; init; }

    /// <summary>What samples the evaluations: onnx (ONNX Runtime, the Studio's default) or torch (TorchSharp).</summary>
    public string EvalRuntime { get; init; } = "onnx";

    /// <summary>What each item's bundle holds; latency needs <see cref="ExportFormat.Onnx"/>.</summary>
    public IReadOnlyList<ExportFormat> Formats { get; init; } = [ExportFormat.Safetensors, ExportFormat.Onnx];

    /// <summary>Whether each item's model.onnx is timed.</summary>
    public bool Latency { get; init; } = true;

    /// <summary>The batch sizes timed.</summary>
    public IReadOnlyList<int> LatencyBatches { get; init; } = [1, 16];

    /// <summary>Untimed runs before the timed ones.</summary>
    public int LatencyWarmup { get; init; } = 2;

    /// <summary>Timed runs per batch size.</summary>
    public int LatencyRuns { get; init; } = 10;

    /// <summary>How many items a plan of these settings over <paramref name="models"/> models runs: each original, then methods x targets.</summary>
    public int ItemCount(int models) => models * (1 + Methods.Count * Targets.Count);

    /// <summary>
    /// The plan: <paramref name="models"/> as <c>{"path", "name"}</c> entries with absolute paths, the output the plan's
    /// own folder (<c>"."</c>: wherever plan.json is, so the folder can be moved), and these settings.
    /// </summary>
    public JsonObject ToPlan(IReadOnlyList<(string Name, string Folder)> models, string description)
    {
        var plan = new JsonObject
        {
            ["description"] = description,
            ["output"] = ".",
            ["models"] = new JsonArray(models.Select(m => (JsonNode)new JsonObject { ["path"] = Path.GetFullPath(m.Folder), ["name"] = m.Name }).ToArray()),
            ["methods"] = new JsonArray(Methods.Select(m => (JsonNode)m).ToArray()),
            ["targets"] = new JsonArray(Targets.Select(t => (JsonNode)t).ToArray()),
            ["prune"] = new JsonObject { ["steps"] = PruneSteps, ["iterations"] = Iterations, ["calibration"] = Calibration, ["seed"] = PruneSeed },
            ["eval"] = new JsonObject { ["samples"] = EvalSamples, ["steps"] = EvalSteps, ["seed"] = EvalSeed, ["batch"] = Math.Clamp(EvalSamples, 1, 100), ["runtime"] = EvalRuntime },
            ["export"] = new JsonObject { ["formats"] = new JsonArray(Formats.Select(f => (JsonNode)f.ToString().ToLowerInvariant()).ToArray()) },
            ["latency"] = Latency
                ? new JsonObject { ["batches"] = new JsonArray(LatencyBatches.Select(b => (JsonNode)b).ToArray()), ["warmup"] = LatencyWarmup, ["runs"] = LatencyRuns }
                : null,
        };
        return plan;
    }

    /// <summary>"0.1, 0.2 0.3" as fractions; the message says what is wrong (null when it is fine).</summary>
    public static IReadOnlyList<double> ParseTargets(string? text, out string? error)
    {
        var targets = new List<double>();
        error = null;
        foreach (string part in Split(text))
        {
            if (!double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out double t) || !(t > 0 && t < 1))
            {
                error = $"'{part}' is not a fraction strictly between 0 and 1 (0.2 removes 20%).";
                return [];
            }
            if (targets.Contains(t))
            {
                error = $"{part} is listed twice.";
                return [];
            }
            targets.Add(t);
        }
        if (targets.Count == 0) error = "Give at least one fraction to remove, e.g. 0.2.";
        return targets;
    }

    /// <summary>"1, 16" as batch sizes of 1 to 1,024; the message says what is wrong (null when it is fine).</summary>
    public static IReadOnlyList<int> ParseBatches(string? text, out string? error)
    {
        var batches = new List<int>();
        error = null;
        foreach (string part in Split(text))
        {
            if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int b) || b is < 1 or > 1024)
            {
                error = $"'{part}' is not a batch size from 1 to 1,024.";
                return [];
            }
            if (!batches.Contains(b)) batches.Add(b);
        }
        if (batches.Count == 0) error = "Give at least one batch size, e.g. 1, 16.";
        return batches;
    }

    /// <summary>Numbers as the form shows them: "0.1, 0.2".</summary>
    public static string Join<T>(IEnumerable<T> values) where T : IFormattable =>
        string.Join(", ", values.Select(v => v.ToString(null, CultureInfo.InvariantCulture)));

    private static string[] Split(string? text) =>
        (text ?? "").Split([',', ';', ' ', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
