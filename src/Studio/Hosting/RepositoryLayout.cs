using Microsoft.Extensions.Configuration;

namespace DiffusionPrune.Studio.Hosting;

/// <summary>
/// Finds the repository the Studio belongs to, so the same build works when started with
/// <c>dotnet run --project src/Studio</c> from the repository root, from <c>src/Studio</c>, or
/// straight from its build output (<c>src/Studio/bin/...</c>).
/// </summary>
public static class RepositoryLayout
{
    /// <summary>The file that marks the repository root.</summary>
    public const string SolutionFileName = "Diffusion.sln";

    /// <summary>
    /// The nearest folder holding <see cref="SolutionFileName"/>, walking up first from the app's
    /// base directory (the build output knows which checkout it came from) and then from the
    /// current directory; null when neither is inside the repository (e.g. a published copy).
    /// </summary>
    public static string? FindRoot() =>
        FindRootFrom(AppContext.BaseDirectory) ?? FindRootFrom(Directory.GetCurrentDirectory());

    /// <summary>The nearest folder at or above <paramref name="start"/> holding the solution file.</summary>
    public static string? FindRootFrom(string start)
    {
        for (var dir = new DirectoryInfo(Path.GetFullPath(start)); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, SolutionFileName)))
                return dir.FullName;
        }
        return null;
    }

    /// <summary>
    /// The Studio's web root: <c>--webroot</c> (or <c>ASPNETCORE_WEBROOT</c>) when given, resolved
    /// from the current directory; otherwise the repository-root <c>wwwroot/</c>; otherwise
    /// <c>wwwroot/</c> beside the app (where a published copy would carry it).
    /// </summary>
    public static string ResolveWebRoot(string[] args, string? repositoryRoot)
    {
        var overrides = new ConfigurationBuilder()
            .AddEnvironmentVariables("ASPNETCORE_")
            .AddCommandLine(args)
            .Build();
        var configured = overrides[WebHostDefaultsWebRootKey];
        if (!string.IsNullOrWhiteSpace(configured))
            return Path.GetFullPath(configured);

        return repositoryRoot is not null
            ? Path.Combine(repositoryRoot, "wwwroot")
            : Path.Combine(AppContext.BaseDirectory, "wwwroot");
    }

    /// <summary>
    /// The samples folder: <paramref name="configured"/> when set (relative paths taken from the
    /// repository root, or the current directory outside a repository), else <c>&lt;repo&gt;/samples</c>,
    /// else <c>samples/</c> under the current directory.
    /// </summary>
    public static string ResolveSamplesRoot(string? configured, string? repositoryRoot)
    {
        var baseDir = repositoryRoot ?? Directory.GetCurrentDirectory();
        return string.IsNullOrWhiteSpace(configured)
            ? Path.Combine(baseDir, "samples")
            : Path.GetFullPath(configured, baseDir);
    }

    /// <summary>
    /// The Studio's output folder: <paramref name="configured"/> when set (relative paths as for the samples folder),
    /// else <c>&lt;repo&gt;/out/studio</c>, else <c>out/studio</c> under the current directory.
    /// </summary>
    public static string ResolveOutputRoot(string? configured, string? repositoryRoot)
    {
        var baseDir = repositoryRoot ?? Directory.GetCurrentDirectory();
        return string.IsNullOrWhiteSpace(configured)
            ? Path.Combine(baseDir, "out", "studio")
            : Path.GetFullPath(configured, baseDir);
    }

    // Same key as WebHostDefaults.WebRootKey; spelled out so this file needs no ASP.NET Core types.
    private const string WebHostDefaultsWebRootKey = "webroot";
}
