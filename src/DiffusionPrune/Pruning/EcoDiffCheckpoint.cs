using System.Globalization;
using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>
/// EcoDiff's state between iterations, in a folder written whole (<see cref="AtomicFolder"/>), so a run killed at any
/// moment (even kill -9) resumes from its last checkpoint and ends with the scores of the uninterrupted run: the logits,
/// the optimizer's moments, the gate-noise generator's state, beta and the iteration history. The calibration set is
/// redrawn from the seed. A checkpoint of other settings is refused.
/// </summary>
public static class EcoDiffCheckpoint
{
    public const string Format = "dprune-ecodiff-checkpoint/1";
    private const string StateFile = "state.json";
    private const string LogitsFile = "logits.safetensors";
    private const string OptimizerFile = "optimizer.safetensors";
    private const string NoiseFile = "gate_noise.bin";

    /// <summary>Where a prune into <paramref name="outputPath"/> keeps its checkpoint: a hidden sibling, removed when the output is written.</summary>
    public static string FolderFor(string outputPath)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(outputPath));
        return Path.Combine(Path.GetDirectoryName(full) ?? ".", $".{Path.GetFileName(full)}.ecodiff-checkpoint");
    }

    /// <summary>Whether <paramref name="folder"/> holds a checkpoint.</summary>
    public static bool Exists(string folder) => File.Exists(Path.Combine(folder, StateFile));

    /// <summary>The settings a checkpoint must have been made with (everything that changes the iterations, not how many there are).</summary>
    public static string Fingerprint(EcoDiffOptions options, ImportanceContext context, long seed)
    {
        var o = options with { CheckpointFolder = null, Resume = false, CheckpointEvery = 1, Iterations = 1 };
        // JSON, not the record's ToString: that formats numbers in the current culture, and a resume must not depend on it
        return string.Join("|", System.Text.Json.JsonSerializer.Serialize(o), context.Steps.ToString(CultureInfo.InvariantCulture),
            context.CalibrationSamples.ToString(CultureInfo.InvariantCulture), seed.ToString(CultureInfo.InvariantCulture),
            SourceIdentity.DescribeFile(context.SchedulerConfigPath), context.SchedulerName ?? "",
            context.CalibrationText is { } text ? System.Text.Json.JsonSerializer.Serialize(text.Prompts) : "");
    }

    public static void Save(string folder, string fingerprint, int iteration, EcoDiffObjective objective, Training.AdamW optimizer,
        IReadOnlyList<EcoDiffIterationReport> history)
    {
        AtomicFolder.Write(folder, "the EcoDiff checkpoint", _ => true, staging =>
        {
            SafetensorsWriter.Write(Path.Combine(staging, LogitsFile),
                objective.NamedParameters().Select(p => new KeyValuePair<string, Tensor>(p.name, p.param.detach().cpu())).OrderBy(kv => kv.Key, StringComparer.Ordinal));
            SafetensorsWriter.Write(Path.Combine(staging, OptimizerFile), optimizer.StateTensors().OrderBy(kv => kv.Key, StringComparer.Ordinal));
            File.WriteAllBytes(Path.Combine(staging, NoiseFile), objective.GateNoiseState);
            var state = new JsonObject
            {
                ["format"] = Format,
                ["iteration"] = iteration,
                ["beta"] = objective.Beta,
                ["fingerprint"] = fingerprint,
                ["history"] = new JsonArray(history.Select(h => (JsonNode)new JsonObject
                {
                    ["iteration"] = h.Iteration, ["loss"] = h.Loss, ["reconstruction"] = h.Reconstruction, ["regularizer"] = h.Regularizer,
                    ["expected_kept_fraction"] = h.ExpectedKeptFraction, ["seconds"] = h.Seconds, ["peak_rss_bytes"] = h.PeakResidentBytes, ["beta"] = h.Beta,
                }).ToArray()),
            };
            File.WriteAllText(Path.Combine(staging, StateFile), state.ToJsonString());
        });
    }

    /// <summary>Restores a checkpoint into the objective, optimizer and history; returns the iteration it was taken after.</summary>
    public static int Load(string folder, string fingerprint, EcoDiffObjective objective, Training.AdamW optimizer, List<EcoDiffIterationReport> history)
    {
        if (!Exists(folder))
            throw new FileNotFoundException($"--resume was given but there is no EcoDiff checkpoint at '{folder}' (a run writes one every --checkpoint-every iterations); start without --resume.");
        JsonObject state;
        try
        {
            state = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, StateFile))) as JsonObject ?? throw new InvalidDataException("not an object");
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidDataException)
        {
            throw new InvalidDataException($"The EcoDiff checkpoint '{folder}' is unreadable ({Messages.OneLine(e.Message)}); start without --resume.");
        }
        if (state["format"]?.GetValue<string>() != Format)
            throw new InvalidDataException($"'{folder}' is not an EcoDiff checkpoint of this version; start without --resume.");
        if (state["fingerprint"]?.GetValue<string>() != fingerprint)
            throw new ArgumentException($"The EcoDiff checkpoint '{folder}' was made with other settings (model, steps, calibration, seed or EcoDiff options); " +
                "resume with the same settings, or start without --resume.");
        var logits = DiffusersModelLoader.ReadSafetensors(Path.Combine(folder, LogitsFile));
        using (no_grad())
            foreach (var (name, parameter) in objective.NamedParameters())
            {
                if (!logits.TryGetValue(name, out var value) || !value.shape.SequenceEqual(parameter.shape))
                    throw new InvalidDataException($"The EcoDiff checkpoint '{folder}' has no logits of the right shape for '{name}'; start without --resume.");
                parameter.copy_(value);
            }
        foreach (var t in logits.Values) t.Dispose();
        using (var file = SafetensorsFile.Open(Path.Combine(folder, OptimizerFile)))
        {
            var moments = file.Entries.Keys.ToDictionary(k => k, k => file.Read(k), StringComparer.Ordinal); // as stored: the step count is an integer
            optimizer.LoadState(moments);
            foreach (var t in moments.Values) t.Dispose();
        }
        objective.GateNoiseState = File.ReadAllBytes(Path.Combine(folder, NoiseFile));
        objective.Beta = state["beta"]!.GetValue<double>();
        history.Clear();
        foreach (var h in state["history"]!.AsArray())
            history.Add(new EcoDiffIterationReport(h!["iteration"]!.GetValue<int>(), h["loss"]!.GetValue<double>(), h["reconstruction"]!.GetValue<double>(),
                h["regularizer"]!.GetValue<double>(), h["expected_kept_fraction"]!.GetValue<double>(), h["seconds"]!.GetValue<double>(),
                h["peak_rss_bytes"]?.GetValue<long>(), h["beta"]!.GetValue<double>()));
        return state["iteration"]!.GetValue<int>();
    }
}
