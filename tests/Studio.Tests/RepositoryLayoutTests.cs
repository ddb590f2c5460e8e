using DiffusionPrune.Studio.Hosting;

namespace DiffusionPrune.Studio.Tests;

public sealed class RepositoryLayoutTests
{
    [Fact]
    public void Finds_the_repository_root_from_a_nested_build_output_folder()
    {
        using var repo = new TempSamplesFolder();
        File.WriteAllText(Path.Combine(repo.Root, RepositoryLayout.SolutionFileName), "");
        var output = Directory.CreateDirectory(Path.Combine(repo.Root, "src", "Studio", "bin", "Debug", "net10.0")).FullName;

        Assert.Equal(repo.Root, RepositoryLayout.FindRootFrom(output));
    }

    [Fact]
    public void The_test_build_itself_lives_in_the_repository()
    {
        var root = RepositoryLayout.FindRoot();

        Assert.NotNull(root);
        Assert.True(File.Exists(Path.Combine(root, "wwwroot", "app.css")), "the repo-root wwwroot/app.css is the Studio's stylesheet");
    }

    [Fact]
    public void Web_root_is_the_repository_wwwroot_unless_overridden_with_webroot()
    {
        Assert.Equal(Path.Combine("/repo", "wwwroot"), RepositoryLayout.ResolveWebRoot([], "/repo"));
        Assert.Equal(Path.GetFullPath("/elsewhere/static"), RepositoryLayout.ResolveWebRoot(["--webroot", "/elsewhere/static"], "/repo"));
    }

    [Fact]
    public void Samples_root_defaults_to_the_repository_samples_and_takes_relative_paths_from_the_root()
    {
        Assert.Equal(Path.Combine("/repo", "samples"), RepositoryLayout.ResolveSamplesRoot("", "/repo"));
        Assert.Equal(Path.GetFullPath("/repo/data/samples"), RepositoryLayout.ResolveSamplesRoot("data/samples", "/repo"));
        Assert.Equal("/abs/samples", RepositoryLayout.ResolveSamplesRoot("/abs/samples", "/repo"));
    }
}
