using DiffusionPrune.Studio;
using DiffusionPrune.Studio.Api;
using DiffusionPrune.Studio.Components;
using DiffusionPrune.Studio.Hosting;
using MudBlazor.Services;

// The web root is the repository-root wwwroot/ (shared with the rest of the repo), not src/Studio/wwwroot;
// it must be chosen before the builder exists. --webroot still overrides it.
// The content root is the build output (appsettings.json is copied there), so settings load the same
// whichever directory the Studio is started from.
// The hidden child of the first start on a machine: the default kernels' check, printed as JSON (ChildKernelCheck).
if (args is ["--check-kernels"]) return DiffusionPrune.Runtime.ChildKernelCheck.RunAndPrint(Console.Out);

// First, before any tensor exists: on a machine whose kernel check failed (cached, or checked now in a child process
// when this machine has no decision yet), cap oneDNN's instruction set while that can still take effect
// (docs/PLATFORMS.md).
DiffusionPrune.Runtime.NumericsGuard.ApplyDefaultAtStartup(() => DiffusionPrune.Runtime.ChildKernelCheck.Run(
    DiffusionPrune.Runtime.ChildKernelCheck.Self("--check-kernels"), TimeSpan.FromMinutes(2)));

var repositoryRoot = RepositoryLayout.FindRoot();
var builder = WebApplication.CreateBuilder(new WebApplicationOptions
{
    Args = args,
    ContentRootPath = AppContext.BaseDirectory,
    WebRootPath = RepositoryLayout.ResolveWebRoot(args, repositoryRoot),
});

// Serve packages' static web assets (_content/MudBlazor/...) in every environment, not just
// Development: run from the build output they are found through <app>.staticwebassets.runtime.json.
builder.WebHost.UseStaticWebAssets();

// The memory limit jobs are checked against before they load anything (default: the memory available when checked).
if (builder.Configuration["Studio:MaxMemory"] is { Length: > 0 } maxMemory)
    DiffusionPrune.Runtime.MemoryLimit.Override = DiffusionPrune.Runtime.MemoryLimit.Parse(maxMemory, "Studio:MaxMemory");

builder.Services.AddStudioServices(builder.Configuration);
builder.Services.AddMudServices();
builder.Services.AddRazorComponents().AddInteractiveServerComponents();

var app = builder.Build();

if (!app.Environment.IsDevelopment())
    app.UseExceptionHandler("/Error", createScopeForErrors: true);
app.UseStatusCodePagesWithReExecute("/not-found", createScopeForStatusCodePages: true);

// Two kinds of static files: the repo-root wwwroot (app.css), which no build manifest lists, is served
// by StaticFiles from that folder alone, before routing; everything in the build manifest
// (_framework/blazor.web.js, _content/MudBlazor/*) is served, fingerprinted and compressed, by MapStaticAssets.
app.UseRepositoryWebRoot();
app.UseRouting();
app.UseAntiforgery();

app.MapStaticAssets();
app.MapStudioApi();
app.MapRazorComponents<App>().AddInteractiveServerRenderMode();

app.Run();
return 0;
