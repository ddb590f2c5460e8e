using DiffusionPrune.Runtime;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Diagnostics;
using DiffusionPrune.Studio.Hosting;
using DiffusionPrune.Studio.Jobs;
using Microsoft.Extensions.Options;

namespace DiffusionPrune.Studio;

/// <summary>Every service the Studio registers, in one place, with its lifetime stated.</summary>
public static class StudioServiceCollectionExtensions
{
    /// <summary>Adds the Studio's options, model catalog and uploads, job state, background job queue and system check.</summary>
    public static IServiceCollection AddStudioServices(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<StudioOptions>().Bind(configuration.GetSection(StudioOptions.SectionName));

        // Singleton: stateless; it reads the disk on every call, so new models show up on refresh.
        // It lists the samples' models, then the Studio's own outputs (pruned/NAME, distilled/NAME).
        services.AddSingleton<IModelCatalog>(provider =>
        {
            var options = provider.GetRequiredService<IOptions<StudioOptions>>().Value;
            string? root = RepositoryLayout.FindRoot();
            string outputs = RepositoryLayout.ResolveOutputRoot(options.OutputRoot, root);
            var links = provider.GetRequiredService<ModelLinks>();
            return new FileSystemModelCatalog(RepositoryLayout.ResolveSamplesRoot(options.SamplesRoot, root),
                [Path.Combine(outputs, StudioOptions.PrunedFolder), Path.Combine(outputs, StudioOptions.DistilledFolder), Path.Combine(outputs, StudioOptions.UploadedFolder)],
                links.List, links.Roots);
        });

        // Singleton: models added by path from the configured roots, kept in the data folder.
        services.AddSingleton(provider =>
        {
            var options = provider.GetRequiredService<IOptions<StudioOptions>>().Value;
            string? root = RepositoryLayout.FindRoot();
            return new ModelLinks(options.ModelRoots.Select(r => Path.GetFullPath(r, root ?? Directory.GetCurrentDirectory())).ToList(),
                Path.Combine(DataFolderOf(options), "linked-models.json"));
        });

        // Singleton: stateless apart from its options; uploads land under the output root's uploaded/ folder.
        services.AddSingleton(provider =>
        {
            var options = provider.GetRequiredService<IOptions<StudioOptions>>().Value;
            return new ModelUploadService(Path.Combine(RepositoryLayout.ResolveOutputRoot(options.OutputRoot, RepositoryLayout.FindRoot()), StudioOptions.UploadedFolder), options);
        });

        // Singleton: stateless; reads the bundles export jobs write under the output root's exports/ folder.
        services.AddSingleton(provider =>
        {
            var options = provider.GetRequiredService<IOptions<StudioOptions>>().Value;
            return new Export.BundleFolders(Path.Combine(RepositoryLayout.ResolveOutputRoot(options.OutputRoot, RepositoryLayout.FindRoot()), StudioOptions.ExportsFolder));
        });

        // Singleton: holds each pipeline bundle's CLIP tokenizer once loaded (thread-safe), for the tokenize endpoint.
        services.AddSingleton<Export.BundleTokenizers>();

        // Singleton: stateless; reads the comparisons compare jobs write under the output root's compared/ folder.
        services.AddSingleton(provider =>
        {
            var options = provider.GetRequiredService<IOptions<StudioOptions>>().Value;
            return new Compare.ComparisonFolders(Path.Combine(RepositoryLayout.ResolveOutputRoot(options.OutputRoot, RepositoryLayout.FindRoot()), StudioOptions.ComparedFolder));
        });

        // Singleton: stateless; reads the batches batch jobs write under the output root's batches/ folder.
        services.AddSingleton(provider =>
        {
            var options = provider.GetRequiredService<IOptions<StudioOptions>>().Value;
            return new Batch.BatchFolders(Path.Combine(RepositoryLayout.ResolveOutputRoot(options.OutputRoot, RepositoryLayout.FindRoot()), StudioOptions.BatchesFolder));
        });

        // Singleton: jobs outlive any one circuit; every open page sees the same list. Kept in SQLite under the data
        // folder, so a restart loses no finished result and marks what it cut off as interrupted (resumable).
        services.AddSingleton(provider =>
        {
            var options = provider.GetRequiredService<IOptions<StudioOptions>>().Value;
            string data = DataFolderOf(options);
            return new JobStateService(store: new SqliteJobStore(Path.Combine(data, "jobs.db")),
                logger: provider.GetRequiredService<ILogger<JobStateService>>());
        });

        // Singleton, exposed twice: the queue pages write to is the hosted service that drains it.
        services.AddSingleton(provider => new ChannelJobQueue(provider.GetRequiredService<JobStateService>(),
            provider.GetRequiredService<ILogger<ChannelJobQueue>>(), Math.Max(1, provider.GetRequiredService<IOptions<StudioOptions>>().Value.Workers)));
        services.AddSingleton<IJobQueue>(provider => provider.GetRequiredService<ChannelJobQueue>());
        services.AddHostedService(provider => provider.GetRequiredService<ChannelJobQueue>());

        // Singleton: the check is process-wide (it can switch oneDNN off for every job), so its last report is too.
        services.AddSingleton<Prune.PruneEstimates>(); // pass times measured once per model and batch, shared by every page
        services.AddSingleton(new SystemCheckService(() => DoctorReport.Run(environment =>
            ChildKernelCheck.Run(ChildKernelCheck.Self("--check-kernels"), TimeSpan.FromMinutes(2), environment))));

        return services;
    }

    /// <summary>The Studio's data folder (jobs, links): <c>Studio:DataFolder</c>, or <c>data/</c> under the output root.</summary>
    private static string DataFolderOf(StudioOptions options)
    {
        string? root = RepositoryLayout.FindRoot();
        return options.DataFolder is { Length: > 0 } configured
            ? Path.GetFullPath(configured, root ?? Directory.GetCurrentDirectory())
            : Path.Combine(RepositoryLayout.ResolveOutputRoot(options.OutputRoot, root), "data");
    }
}
