namespace DiffusionPrune.Studio;

/// <summary>Settings bound from the <c>Studio</c> configuration section.</summary>
public sealed class StudioOptions
{
    /// <summary>The configuration section these options are bound from.</summary>
    public const string SectionName = "Studio";

    /// <summary>Where under <see cref="OutputRoot"/> pruned models go.</summary>
    public const string PrunedFolder = "pruned";

    /// <summary>Where under <see cref="OutputRoot"/> distilled models go.</summary>
    public const string DistilledFolder = "distilled";

    /// <summary>Where under <see cref="OutputRoot"/> uploaded models go.</summary>
    public const string UploadedFolder = "uploaded";

    /// <summary>How models added by path are listed (<c>linked/NAME</c>); they stay where they are.</summary>
    public const string LinkedFolder = "linked";

    /// <summary>
    /// Folders users keep models in (appsettings.json <c>Studio:ModelRoots</c>). Their model folders are listed as
    /// <c>ROOTNAME/FOLDER</c>, and a model anywhere below one can be added by path; no path outside them is accepted,
    /// after symbolic links are followed. Default: none.
    /// </summary>
    public string[] ModelRoots { get; set; } = [];

    /// <summary>Where under <see cref="OutputRoot"/> exported bundles (and their zips) go; not listed as models.</summary>
    public const string ExportsFolder = "exports";

    /// <summary>Where under <see cref="OutputRoot"/> evaluation reports of evaluate jobs go.</summary>
    public const string EvaluationsFolder = "evaluations";

    /// <summary>Where under <see cref="OutputRoot"/> the ONNX bundles previews run from are cached, by model hash.</summary>
    public const string OnnxCacheFolder = "onnx-cache";

    /// <summary>Where under <see cref="OutputRoot"/> sample grids made from a model's page go.</summary>
    public const string SamplesFolder = "samples";

    /// <summary>Where under <see cref="OutputRoot"/> comparisons go (not models: the catalog does not list them).</summary>
    public const string ComparedFolder = "compared";

    /// <summary>Where under <see cref="OutputRoot"/> batch plans run by batch jobs go, one folder each (not models: the catalog does not list them).</summary>
    public const string BatchesFolder = "batches";

    /// <summary>How many jobs run at once. Default 1: each job holds a model and its activations.</summary>
    public int Workers { get; set; } = 1;

    /// <summary>Largest model zip accepted (bytes of the upload). Default 2 GiB.</summary>
    public long MaxUploadBytes { get; set; } = 2L << 30;

    /// <summary>Most entries a model zip may hold. Default 256.</summary>
    public int MaxZipEntries { get; set; } = 256;

    /// <summary>Most bytes a model zip may unpack to (counted while extracting, not taken from the zip's headers). Default 8 GiB.</summary>
    public long MaxUnpackedBytes { get; set; } = 8L << 30;

    /// <summary>Deepest folder nesting of an entry in a model zip. Default 4.</summary>
    public int MaxZipPathDepth { get; set; } = 4;

    /// <summary>Largest JSON body the API reads. Default 64 KiB.</summary>
    public long MaxJsonBodyBytes { get; set; } = 64 * 1024;

    /// <summary>
    /// Folder that holds <c>models/&lt;name&gt;/</c>. Empty (the default) means the repository's
    /// <c>samples/</c>; a relative path is taken from the repository root when one is found,
    /// otherwise from the current directory.
    /// </summary>
    public string SamplesRoot { get; set; } = "";

    /// <summary>
    /// Folder the Studio writes its outputs to (pruned models go to <c>pruned/</c>, distilled ones to <c>distilled/</c>). Empty (the default) means the
    /// repository's <c>out/studio</c>; a relative path is taken from the repository root when one is found.
    /// </summary>
    public string OutputRoot { get; set; } = "";

    /// <summary>
    /// The memory a job may use, e.g. <c>8G</c> (read at start-up into the core's limit); empty means the memory available
    /// when a job is checked (or <c>DPRUNE_MAX_MEMORY</c>). A job whose estimate is above it is refused before it loads anything.
    /// </summary>
    public string MaxMemory { get; set; } = "";

    /// <summary>
    /// Folder of the Studio's own state (the jobs database, <c>jobs.db</c>). Empty (the default) means <c>data/</c> under
    /// <see cref="OutputRoot"/>; a relative path is taken from the repository root when one is found.
    /// </summary>
    public string DataFolder { get; set; } = "";
}
