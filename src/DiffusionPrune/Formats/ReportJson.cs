using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffusionPrune.Formats;

/// <summary>
/// The one way reports (prune, eval, batch items) are written: it cannot throw on a number. JSON has no NaN or
/// infinity, and System.Text.Json refuses to write them, which would lose a report that took minutes to compute
/// (e.g. PSNR = +∞ when a model is compared with itself). Non-finite numbers are written as <c>null</c>, and a
/// <c>notes</c> array says which fields they were and what they held. Files are written beside the target and renamed
/// over it, so a reader sees the old report or the whole new one.
/// </summary>
public static class ReportJson
{
    public const string NotesField = "notes";

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>A copy of <paramref name="report"/> with every non-finite number replaced by null and noted.</summary>
    public static JsonObject Sanitize(JsonObject report)
    {
        var copy = report.DeepClone().AsObject();
        var notes = new List<string>();
        Visit(copy, "", notes);
        if (notes.Count > 0)
        {
            var existing = copy[NotesField] as JsonArray ?? new JsonArray();
            foreach (var note in notes) existing.Add(note);
            copy[NotesField] = existing;
        }
        return copy;
    }

    /// <summary>The report as indented JSON text (sanitized).</summary>
    public static string ToText(JsonObject report) => Sanitize(report).ToJsonString(Indented);

    /// <summary>Writes the report (sanitized) atomically, creating the folder.</summary>
    public static void Write(string path, JsonObject report)
    {
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string partial = $"{full}.{Environment.ProcessId}.partial";
        File.WriteAllText(partial, ToText(report));
        File.Move(partial, full, overwrite: true);
    }

    private static void Visit(JsonNode? node, string path, List<string> notes)
    {
        switch (node)
        {
            case JsonObject obj:
                foreach (var (key, child) in obj.ToList())
                {
                    string childPath = path.Length == 0 ? key : $"{path}.{key}";
                    if (IsNonFinite(child, out double value))
                    {
                        obj[key] = null;
                        notes.Add(Note(childPath, value));
                    }
                    else Visit(child, childPath, notes);
                }
                break;
            case JsonArray array:
                for (int i = 0; i < array.Count; i++)
                {
                    string childPath = $"{path}[{i}]";
                    if (IsNonFinite(array[i], out double value))
                    {
                        array[i] = null;
                        notes.Add(Note(childPath, value));
                    }
                    else Visit(array[i], childPath, notes);
                }
                break;
        }
    }

    private static bool IsNonFinite(JsonNode? node, out double value)
    {
        value = 0;
        if (node is not JsonValue v) return false;
        if (v.TryGetValue(out double d)) value = d;
        else if (v.TryGetValue(out float f)) value = f;
        else return false;
        return !double.IsFinite(value);
    }

    private static string Note(string path, double value) =>
        $"{path} was {(double.IsNaN(value) ? "NaN" : value > 0 ? "+infinity" : "-infinity")}, which JSON cannot hold; written as null" +
        (double.IsPositiveInfinity(value) && path.Contains("psnr", StringComparison.Ordinal) ? " (identical images: PSNR is unbounded)" : "");
}
