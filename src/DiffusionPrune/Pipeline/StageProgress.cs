namespace DiffusionPrune.Pipeline;

/// <summary>The stages a compression session runs, in the order a batch item runs them.</summary>
public enum PipelineStage
{
    Load,
    Sample,
    Prune,
    Distill,
    Evaluate,
    Export,
    Latency,
    Compare,
}

/// <summary>A picture a stage shows while it runs (a sample grid): PNG bytes, ready for a page or a file.</summary>
public sealed record PreviewImage(byte[] Png, int Width, int Height, string Caption);

/// <summary>
/// What every stage reports, to every face: the stage, how far it is (null for a note that does not move it), a line for
/// people, the figures of the moment by name (loss, expected kept fraction, peak memory, ...) and, now and then, a
/// picture. <see cref="Done"/> of <see cref="Total"/> counts the stage's own unit (iterations, steps, images) when it has one.
/// </summary>
public sealed record StageProgress(
    PipelineStage Stage,
    double? Fraction,
    string Message,
    IReadOnlyDictionary<string, double>? Metrics = null,
    PreviewImage? Preview = null,
    long? Done = null,
    long? Total = null)
{
    /// <summary>A note: a line for people that does not move the stage's fraction.</summary>
    public static StageProgress Note(PipelineStage stage, string message) => new(stage, null, message);

    /// <summary><paramref name="done"/> of <paramref name="total"/> units of the stage.</summary>
    public static StageProgress Step(PipelineStage stage, long done, long total, string message, IReadOnlyDictionary<string, double>? metrics = null) =>
        new(stage, total <= 0 ? 1 : Math.Clamp((double)done / total, 0, 1), message, metrics, null, done, total);
}

/// <summary>
/// Passes progress on as it is reported, on the stage's own thread and in order (unlike <see cref="Progress{T}"/>, which
/// posts to the thread pool and may reorder). A face that must marshal to its UI thread does so in its callback.
/// </summary>
public sealed class SynchronousProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
