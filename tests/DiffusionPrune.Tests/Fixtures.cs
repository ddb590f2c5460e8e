namespace DiffusionPrune.Tests;

/// <summary>
/// Where the reference outputs produced by diffusers live: <c>shared/fixtures/diffusers</c> beside the repository
/// (the repository root is the folder holding Diffusion.sln, found by walking up from the test assembly).
/// </summary>
public static class Fixtures
{
    private static readonly Lazy<string> Root = new(FindDiffusersRoot);

    /// <summary>The absolute path of <c>shared/fixtures/diffusers</c>.</summary>
    public static string DiffusersRoot => Root.Value;

    private static string FindDiffusersRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (!File.Exists(Path.Combine(directory.FullName, "Diffusion.sln"))) continue;
            string candidate = Path.GetFullPath(Path.Combine(directory.FullName, "..", "shared", "fixtures", "diffusers"));
            if (Directory.Exists(candidate)) return candidate;
            throw new DirectoryNotFoundException(
                $"The repository is at '{directory.FullName}' but '{candidate}' does not exist: the diffusers fixtures must be checked out as shared/ beside the repository.");
        }
        throw new DirectoryNotFoundException(
            $"No folder with Diffusion.sln above '{AppContext.BaseDirectory}', so the fixtures (../shared/fixtures/diffusers from the repository) cannot be located.");
    }
}
