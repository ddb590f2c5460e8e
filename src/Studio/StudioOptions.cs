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
}
