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

    public Task InitializeAsync() => Task.CompletedTask;

    public virtual async Task DisposeAsync() => await Context.DisposeAsync();
}
