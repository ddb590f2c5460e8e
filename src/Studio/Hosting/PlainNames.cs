using System.Text.RegularExpressions;

namespace DiffusionPrune.Studio.Hosting;

/// <summary>
/// The one test for a name taken from a request (a comparison, batch, bundle or file in one of them): letters, digits,
/// '.', '_' and '-', starting with a letter or digit, at most 128 characters, never "..". No separator can pass, so such
/// a name joined to a folder stays in it.
/// </summary>
public static partial class PlainNames
{
    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    private static partial Regex Pattern();

    /// <summary>Whether <paramref name="name"/> is a plain name.</summary>
    public static bool Is([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] string? name) => name is not null && Pattern().IsMatch(name) && !name.Contains("..", StringComparison.Ordinal);
}
