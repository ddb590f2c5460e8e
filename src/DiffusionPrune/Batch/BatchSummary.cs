using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using DiffusionPrune.Analysis;
using Microsoft.ML.OnnxRuntime;

namespace DiffusionPrune.Batch;

/// <summary>One finished item as the summary shows it; latencies are ms per batch (median), keyed by batch size.</summary>
public sealed record BatchSummaryRow(
    string Model, string Method, double? Target, double AchievedRemoved, long Parameters, long Macs,
    double Fid, double FidLower, double FidUpper, double Kid, double? Ssim,
    IReadOnlyDictionary<int, double> OnnxMs, IReadOnlyDictionary<int, double> TorchMs)
{
    public bool IsOriginal => Method == BatchItem.OriginalName;

    /// <exception cref="InvalidDataException">The item file lacks a result (edited by hand, or another format).</exception>
    public static BatchSummaryRow FromItem(JsonObject item)
    {
        static JsonNode Need(JsonNode? parent, string key) =>
            parent?[key] ?? throw new InvalidDataException($"The item file has no \"{key}\".");
        var eval = Need(item, "eval");
        var fid = Need(eval, "fid_proxy");
        return new BatchSummaryRow(
            Need(item, "model").GetValue<string>(), Need(item, "method").GetValue<string>(), item["target_removed_params"]?.GetValue<double>(),
            Need(item, "achieved_removed_params").GetValue<double>(), Need(item, "parameters").GetValue<long>(), Need(item, "macs").GetValue<long>(),
            Need(fid, "value").GetValue<double>(), Need(fid, "lower").GetValue<double>(), Need(fid, "upper").GetValue<double>(),
            Need(Need(eval, "kid"), "mean").GetValue<double>(), eval["ssim_to_reference"]?.GetValue<double>(),
            Medians(item["latency"]?[LatencyResult.OnnxRuntimeCpu]), Medians(item["latency"]?[LatencyResult.TorchSharp]));
    }

    private static Dictionary<int, double> Medians(JsonNode? results) =>
        results is JsonArray array ? array.Select(r => LatencyResult.FromJson(r ?? throw new InvalidDataException("A latency result is null."))).ToDictionary(r => r.Batch, r => r.MedianMs) : [];
}

/// <summary>A row with what it is measured against: its model's original row (null when the original is not finished).</summary>
public sealed record BatchComparison(BatchSummaryRow Row, BatchSummaryRow? Original)
{
    /// <summary>The original's ONNX Runtime median over this row's, at one batch size.</summary>
    public double? SpeedUp(int batch) =>
        Original is not null && Original.OnnxMs.TryGetValue(batch, out var o) && Row.OnnxMs.TryGetValue(batch, out var r) && r > 0 ? o / r : null;

    /// <summary>1 − MACs / the original's MACs.</summary>
    public double? MacReduction => Original is { Macs: > 0 } ? 1 - (double)Row.Macs / Original.Macs : null;

    /// <summary>The speed-up the MAC count promises: the original's MACs / this row's.</summary>
    public double? TheoreticalSpeedUp => Original is not null && Row.Macs > 0 ? (double)Original.Macs / Row.Macs : null;

    /// <summary>Realised speed-up over the theoretical one: 1 when every MAC saved is time saved.</summary>
    public double? RealisedOverTheoretical(int batch) => SpeedUp(batch) is double s && TheoreticalSpeedUp is double t ? s / t : null;
}

/// <summary>The files a summary wrote and the rows in them.</summary>
public sealed record BatchSummaryFiles(string Markdown, string Csv, string Pareto, IReadOnlyList<BatchComparison> Rows, IReadOnlyList<BatchItem> Unfinished);

/// <summary>
/// summary.md and summary.csv (one row per finished item, the same columns) and pareto.png, written from the item files
/// under a plan's output, so they can be rebuilt at any time and include whatever has finished so far.
/// </summary>
public static class BatchSummary
{
    public const string MarkdownName = "summary.md";
    public const string CsvName = "summary.csv";
    public const string ParetoName = "pareto.png";

    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static BatchSummaryFiles Write(BatchPlan plan)
    {
        var rows = new List<BatchComparison>();
        var unfinished = new List<BatchItem>();
        foreach (var model in plan.Models)
        {
            var modelRows = new List<BatchSummaryRow>();
            foreach (var item in plan.Items().Where(i => i.Model == model))
            {
                if (BatchRunner.Inspect(plan, item) == BatchRunner.ItemState.Finished && BatchRunner.ReadItem(plan.FolderOf(item)) is { } record
                    && TryRow(record) is { } row)
                    modelRows.Add(row);
                else
                    unfinished.Add(item);
            }
            var original = modelRows.FirstOrDefault(r => r.IsOriginal);
            rows.AddRange(modelRows.Select(r => new BatchComparison(r, original)));
        }
        var batches = plan.Latency?.Batches ?? [];
        var files = new BatchSummaryFiles(Path.Combine(plan.Output, MarkdownName), Path.Combine(plan.Output, CsvName), Path.Combine(plan.Output, ParetoName), rows, unfinished);
        BatchRunner.WriteAtomically(files.Markdown, Markdown(plan, rows, unfinished, batches));
        BatchRunner.WriteAtomically(files.Csv, Csv(rows, batches));
        ParetoPlot.Save(files.Pareto, rows.Select(r => r.Row).ToList(), plan.Latency?.ReferenceBatch, Path.GetFileName(plan.PlanPath));
        return files;
    }

    /// <summary>A row from an item file, or null when the file lacks a result (edited by hand, or from an older format).</summary>
    private static BatchSummaryRow? TryRow(JsonObject record)
    {
        try
        {
            return BatchSummaryRow.FromItem(record);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or FormatException)
        {
            return null;
        }
    }

    /// <summary>Column headings shared by the Markdown table and (as snake_case names) the CSV.</summary>
    /// <remarks>A column without a Markdown cell is CSV only (the Markdown shows the FID interval in one cell).</remarks>
    private static List<(string markdown, string csv, Func<BatchComparison, string>? markdownCell, Func<BatchComparison, string> csvCell)> Columns(IReadOnlyList<int> batches)
    {
        var columns = new List<(string, string, Func<BatchComparison, string>?, Func<BatchComparison, string>)>
        {
            ("model", "model", c => c.Row.Model, c => c.Row.Model),
            ("method", "method", c => c.Row.Method, c => c.Row.Method),
            ("target", "target_removed_params", c => c.Row.Target is double t ? t.ToString("0%", Inv) : "—", c => Number(c.Row.Target)),
            ("removed params", "achieved_removed_params", c => c.Row.AchievedRemoved.ToString("0.0%", Inv), c => Number(c.Row.AchievedRemoved)),
            ("params", "parameters", c => c.Row.Parameters.ToString("N0", Inv), c => c.Row.Parameters.ToString(Inv)),
            ("MACs", "macs", c => c.Row.Macs.ToString("N0", Inv), c => c.Row.Macs.ToString(Inv)),
            ("FID-proxy [95%]", "fid_proxy", c => $"{c.Row.Fid.ToString("F3", Inv)} [{c.Row.FidLower.ToString("F3", Inv)}, {c.Row.FidUpper.ToString("F3", Inv)}]", c => Number(c.Row.Fid)),
            ("", "fid_lower", null, c => Number(c.Row.FidLower)),
            ("", "fid_upper", null, c => Number(c.Row.FidUpper)),
            ("KID", "kid", c => c.Row.Kid.ToString("F5", Inv), c => Number(c.Row.Kid)),
            ("SSIM to original", "ssim_to_original", c => c.Row.Ssim is double s ? s.ToString("F4", Inv) : "—", c => Number(c.Row.Ssim)),
        };
        foreach (int b in batches)
            columns.Add(($"ORT ms b{b}", $"ort_ms_b{b}", c => Cell(c.Row.OnnxMs, b, "F2"), c => Number(c.Row.OnnxMs.TryGetValue(b, out var v) ? v : null)));
        foreach (int b in batches)
            columns.Add(($"speed-up b{b}", $"speedup_b{b}", c => c.SpeedUp(b) is double s ? s.ToString("F2", Inv) + "x" : "—", c => Number(c.SpeedUp(b))));
        columns.Add(("MAC reduction", "mac_reduction", c => c.MacReduction is double m ? m.ToString("0.0%", Inv) : "—", c => Number(c.MacReduction)));
        if (batches.Count > 0)
        {
            int reference = batches.Max();
            columns.Add(($"realised / theoretical b{reference}", $"realised_over_theoretical_b{reference}",
                c => c.RealisedOverTheoretical(reference) is double r ? r.ToString("F2", Inv) : "—", c => Number(c.RealisedOverTheoretical(reference))));
        }
        foreach (int b in batches)
            columns.Add(($"TorchSharp ms b{b}", $"torch_ms_b{b}", c => Cell(c.Row.TorchMs, b, "F2"), c => Number(c.Row.TorchMs.TryGetValue(b, out var v) ? v : null)));
        return columns;
    }

    private static string Cell(IReadOnlyDictionary<int, double> values, int batch, string format) =>
        values.TryGetValue(batch, out var v) ? v.ToString(format, Inv) : "—";

    private static string Number(double? value) => value is double v ? Math.Round(v, 6).ToString("R", Inv) : "";

    public static string Csv(IReadOnlyList<BatchComparison> rows, IReadOnlyList<int> batches)
    {
        var columns = Columns(batches);
        var csv = new StringBuilder();
        csv.AppendLine(string.Join(",", columns.Select(c => c.csv)));
        foreach (var row in rows)
            csv.AppendLine(string.Join(",", columns.Select(c => Escape(c.csvCell(row)))));
        return csv.ToString();
    }

    private static string Escape(string cell) => cell.IndexOfAny([',', '"', '\n']) >= 0 ? "\"" + cell.Replace("\"", "\"\"") + "\"" : cell;

    public static string Markdown(BatchPlan plan, IReadOnlyList<BatchComparison> rows, IReadOnlyList<BatchItem> unfinished, IReadOnlyList<int> batches)
    {
        var columns = Columns(batches).Where(c => c.markdownCell is not null).ToList();
        int total = plan.Items().Count;
        var md = new StringBuilder();
        md.AppendLine(Inv, $"# Batch summary: {Path.GetFileName(plan.PlanPath)}");
        md.AppendLine();
        md.AppendLine(Inv, $"{rows.Count} of {total} items finished; written {DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm} UTC by `dprune batch {Path.GetFileName(plan.PlanPath)}`.");
        md.AppendLine();
        var p = plan.Prune;
        string layerNote = plan.Methods.Any(m => Pruning.Importance.ImportanceCriteria.Find(m) is { RemovesLayers: true })
            ? $"; layer methods choose by {p.Selection.ToString().ToLowerInvariant()} under a {p.Budget.ToString().ToLowerInvariant()} budget (their targets are fractions of it)" : "";
        md.AppendLine(Inv, $"- **Pruning**: {string.Join(", ", plan.Methods)} to remove {string.Join(", ", plan.Targets.Order().Select(t => t.ToString("0%", Inv)))} of the parameters; " +
            $"{p.Steps} calibration steps, {p.Calibration} calibration samples, {p.Iterations} EcoDiff iterations, seed {p.Seed}{layerNote}.");
        if (plan.Distill is { } d)
            md.AppendLine(Inv, $"- **Distillation**: every pruned model is distilled from its original before it is measured: {d.Kd.ToString().ToLowerInvariant()} KD, " +
                $"{d.Steps} steps of {d.BatchSize} images ({(long)d.Steps * d.BatchSize:N0} images), learning rate {d.LearningRate}, data {(d.Data == "mnist" ? "mnist" : Path.GetFileName(d.Data))}, seed {d.Seed}.");
        var e = plan.Eval;
        md.AppendLine(Inv, $"- **Quality**: {e.Samples} samples x {e.Steps} {e.Scheduler} steps (seed {e.Seed}, guidance {e.GuidanceScale}, sampled in {(e.Runtime == "onnx" ? "ONNX Runtime" : "TorchSharp")}); FID-proxy with its 95% bootstrap interval " +
            $"and KID against the MNIST test split in the project's feature space; SSIM of each pruned model's samples to the original's from the same noise.");
        if (plan.Latency is { } l)
        {
            string threads = l.Threads == 0 ? "ONNX Runtime's default intra-op threads" : $"{l.Threads} intra-op threads";
            md.AppendLine(Inv, $"- **Latency**: one forward pass of `model.onnx` at batch {string.Join(" and ", l.Batches)} in an ONNX Runtime {OrtEnv.Instance().GetVersionString()} CPU session " +
                $"({threads}); median ms per batch of {l.Runs} runs after {l.Warmup} warm-up{(l.Torch ? "; TorchSharp's forward pass (CPU, no_grad) on the same inputs for comparison" : "")}" +
                $". Machine: {Environment.ProcessorCount} logical cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}. Timings share the machine with whatever else ran.");
        }
        md.AppendLine();
        md.AppendLine("| " + string.Join(" | ", columns.Select(c => c.markdown)) + " |");
        md.AppendLine("|" + string.Concat(columns.Select((c, i) => i < 2 ? "---|" : "---:|")));
        foreach (var row in rows)
            md.AppendLine("| " + string.Join(" | ", columns.Select(c => c.markdownCell!(row))) + " |");
        md.AppendLine();
        if (batches.Count > 0)
        {
            md.AppendLine("Speed-up is the original's ONNX Runtime median over the row's at the same batch. MAC reduction is 1 − MACs / the original's MACs, " +
                "so the theoretical speed-up is the original's MACs / MACs; realised / theoretical divides the measured speed-up at the largest batch by it " +
                "(1 means every MAC saved is time saved; below 1, the removed work was not where the time goes).");
            md.AppendLine();
        }
        if (unfinished.Count > 0)
        {
            md.AppendLine(Inv, $"Not finished ({unfinished.Count}): {string.Join(", ", unfinished.Select(u => u.ToString()))}. Run the plan again to do them.");
            md.AppendLine();
        }
        md.AppendLine(Inv, $"![FID-proxy against latency and parameters, Pareto fronts]({ParetoName})");
        return md.ToString();
    }
}
