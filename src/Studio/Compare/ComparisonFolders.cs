using System.Text.RegularExpressions;
using DiffusionPrune.Evaluation;

namespace DiffusionPrune.Studio.Compare;

/// <summary>A finished comparison as the Studio lists it: its folder name (the page's address) and its report.</summary>
public sealed record ComparisonEntry(string Name, string Folder, ComparisonReport Report);

/// <summary>
/// The comparisons under the Studio's output (<c>compared/NAME/</c>), each written by a compare job. Names and files are
/// taken from requests only when they are plain names (no separators, no <c>..</c>) of what is there, so nothing outside
/// a comparison folder can be read through them.
/// </summary>
public sealed partial class ComparisonFolders(string root)
{
    /// <summary>The folder comparisons are written under.</summary>
    public string Root { get; } = Path.GetFullPath(root);

    private static bool IsPlain(string? name) => Hosting.PlainNames.Is(name);

    /// <summary>Every readable comparison, newest first.</summary>
    public IReadOnlyList<ComparisonEntry> List()
    {
        if (!Directory.Exists(Root)) return [];
        var entries = new List<ComparisonEntry>();
        foreach (var folder in Directory.EnumerateDirectories(Root))
            if (Find(Path.GetFileName(folder)) is { } entry) entries.Add(entry);
        return entries.OrderByDescending(e => e.Report.CreatedAt).ToList();
    }

    /// <summary>The comparison named <paramref name="name"/>, or null when there is none (or it cannot be read).</summary>
    public ComparisonEntry? Find(string? name)
    {
        if (!IsPlain(name)) return null;
        string folder = Path.Combine(Root, name!);
        if (!File.Exists(Path.Combine(folder, ComparisonReport.JsonName))) return null;
        try
        {
            return new ComparisonEntry(name!, folder, ComparisonReport.Load(folder));
        }
        catch (Exception e) when (e is InvalidDataException or System.Text.Json.JsonException or IOException or InvalidOperationException or FormatException)
        {
            return null;
        }
    }

    /// <summary>The path of <paramref name="file"/> (a PNG, markdown or JSON file directly in the comparison's folder), or null.</summary>
    public string? FileOf(string? name, string? file)
    {
        if (!IsPlain(name) || !IsPlain(file)) return null;
        if (Path.GetExtension(file) is not (".png" or ".md" or ".json")) return null;
        string path = Path.Combine(Root, name!, file!);
        return File.Exists(path) ? path : null;
    }
}
