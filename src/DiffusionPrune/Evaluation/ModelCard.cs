using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace DiffusionPrune.Evaluation;

/// <summary>Writes a model folder's README.md: how it was made, on what machine, and what it scores.</summary>
public static class ModelCard
{
    public static string Render(string title, string description, string trainCommand, JsonObject? trainingArgs, string machine,
        IReadOnlyList<EvalReport> evaluations, string? gridFile, string evalCommand)
    {
        var c = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.AppendLine($"# {title}").AppendLine().AppendLine(description).AppendLine();
        if (gridFile is not null)
            sb.AppendLine($"![samples]({gridFile})").AppendLine();
        sb.AppendLine("## Training").AppendLine();
        sb.AppendLine("```bash").AppendLine(trainCommand).AppendLine("```").AppendLine();
        if (trainingArgs is not null)
        {
            sb.AppendLine("| setting | value |").AppendLine("|---|---|");
            foreach (var (k, v) in trainingArgs) sb.AppendLine($"| {k} | {v?.ToJsonString()} |");
            sb.AppendLine();
        }
        sb.AppendLine($"Machine: {machine}").AppendLine();
        if (evaluations.Count > 0)
        {
            var first = evaluations[0];
            sb.AppendLine("## Quality").AppendLine();
            sb.AppendLine($"Parameters {first.Parameters:N0}; {first.Macs:N0} MACs per sample. FID-proxy uses the project's MNIST feature network " +
                "(samples/models/featurenet) against the 2,000 real test images; the interval is a 95% bootstrap over the generated set.").AppendLine();
            sb.AppendLine("| sampler | steps | N | FID-proxy [95%] | KID | precision / recall | class accuracy | ms / image |");
            sb.AppendLine("|---|---|---|---|---|---|---|---|");
            foreach (var e in evaluations)
                sb.AppendLine(string.Create(c, $"| {e.Scheduler} | {e.Steps} | {e.Samples} | {e.Fid.Value:F2} [{e.Fid.Lower:F2}, {e.Fid.Upper:F2}] | {e.Kid.Mean:F4} | {e.PrecisionRecall.Precision:F3} / {e.PrecisionRecall.Recall:F3} | {(e.ClassAccuracy is double a ? a.ToString("P1", c) : "—")} | {e.SamplerMillisecondsPerImage:F1} |"));
            sb.AppendLine().AppendLine("Reproduce:").AppendLine().AppendLine("```bash").AppendLine(evalCommand).AppendLine("```");
        }
        return sb.ToString();
    }
}
