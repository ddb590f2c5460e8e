using Microsoft.Extensions.FileProviders;

namespace DiffusionPrune.Studio.Hosting;

/// <summary>Serves the files of the Studio's web root folder itself (the repo-root <c>wwwroot/</c>).</summary>
public static class RepositoryWebRootExtensions
{
    /// <summary>
    /// Adds StaticFiles over the web root folder only — not the whole web root provider, which also
    /// holds the packages' <c>_content/</c> assets that <c>MapStaticAssets</c> serves better. Call it
    /// before <c>UseRouting</c>, so these files never reach the static-assets fallback endpoint. A
    /// missing web root is logged, not fatal: pages still work, unstyled by app.css.
    /// </summary>
    public static WebApplication UseRepositoryWebRoot(this WebApplication app)
    {
        var webRoot = app.Environment.WebRootPath;
        if (string.IsNullOrEmpty(webRoot) || !Directory.Exists(webRoot))
        {
            app.Logger.LogWarning(
                "Web root {WebRoot} does not exist, so app.css will not be served; pass --webroot <folder> holding it.",
                webRoot);
            return app;
        }
        app.UseStaticFiles(new StaticFileOptions { FileProvider = new PhysicalFileProvider(webRoot) });
        return app;
    }
}
