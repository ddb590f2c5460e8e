using System.Security.Cryptography;

namespace DiffusionPrune.Tests;

/// <summary>
/// The vendored diffusers fixtures are complete and unchanged: every file tests/fixtures/diffusers.sha256 lists is there
/// with its hash (a missing or truncated fixture fails here, by name, instead of skipping a parity test), and, when the
/// source they are copied from sits beside the clone (../shared/fixtures/diffusers), the two trees are identical.
/// </summary>
public class FixtureManifestTests
{
    private static string ManifestPath => Path.Combine(Fixtures.RepoRoot, "tests", "fixtures", "diffusers.sha256");

    private static Dictionary<string, string> Manifest() =>
        File.ReadAllLines(ManifestPath)
            .Where(line => line.Length > 0)
            .Select(line => (Hash: line[..64], Path: line[66..]))
            .ToDictionary(e => e.Path, e => e.Hash, StringComparer.Ordinal);

    private static Dictionary<string, string> HashTree(string root) =>
        Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .ToDictionary(f => Path.GetRelativePath(root, f).Replace('\\', '/'), Sha256, StringComparer.Ordinal);

    private static string Sha256(string file)
    {
        using var stream = File.OpenRead(file);
        return Convert.ToHexString(SHA256.HashData(stream)).ToLowerInvariant();
    }

    [Fact]
    public void Every_listed_fixture_is_present_with_its_hash_and_nothing_unlisted_is_there()
    {
        var manifest = Manifest();
        Assert.True(manifest.Count >= 40, $"the manifest lists only {manifest.Count} files");
        var actual = HashTree(Fixtures.DiffusersRoot);
        var missing = manifest.Keys.Except(actual.Keys).ToList();
        Assert.True(missing.Count == 0, "missing fixtures: " + string.Join(", ", missing));
        var changed = manifest.Where(e => actual[e.Key] != e.Value).Select(e => e.Key).ToList();
        Assert.True(changed.Count == 0, "fixtures whose content changed: " + string.Join(", ", changed));
        var unlisted = actual.Keys.Except(manifest.Keys).ToList();
        Assert.True(unlisted.Count == 0, "fixtures not in diffusers.sha256: " + string.Join(", ", unlisted));
    }

    [Fact]
    public void The_vendored_copy_matches_its_source_when_the_source_is_beside_the_clone()
    {
        if (Fixtures.SharedDiffusersRoot is not { } shared) return; // a clone alone: the manifest test above holds
        var source = HashTree(shared);
        var copy = HashTree(Fixtures.DiffusersRoot);
        var drift = source.Keys.Union(copy.Keys)
            .Where(k => !source.TryGetValue(k, out var a) || !copy.TryGetValue(k, out var b) || a != b)
            .OrderBy(k => k, StringComparer.Ordinal).ToList();
        Assert.True(drift.Count == 0, $"tests/fixtures/diffusers differs from {shared} in: {string.Join(", ", drift)}. " +
            "Copy the source again and regenerate tests/fixtures/diffusers.sha256 (see tests/fixtures/README.md).");
    }
}
