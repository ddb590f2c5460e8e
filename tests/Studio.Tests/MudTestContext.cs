using MudBlazor.Services;

namespace DiffusionPrune.Studio.Tests;

/// <summary>
/// A bUnit context set up for MudBlazor components, owned by a test class rather than inherited:
/// MudBlazor registers services that are only <see cref="IAsyncDisposable"/>, and xunit v2 disposes
/// test classes synchronously, so the context must be disposed through <see cref="IAsyncLifetime"/>.
/// </summary>
public abstract class MudTestContext : IAsyncLifetime
{
    protected MudTestContext()
    {
        Context.Services.AddMudServices();
        Context.JSInterop.Mode = JSRuntimeMode.Loose;
    }

    protected BunitContext Context { get; } = new();

    /// <summary>How long a page may take to show what its services loaded: bUnit's 1 s default fails on a loaded machine.</summary>
    protected static readonly TimeSpan WaitTimeout = TimeSpan.FromSeconds(15);

    public Task InitializeAsync() => Task.CompletedTask;

    public virtual async Task DisposeAsync() => await Context.DisposeAsync();
}
