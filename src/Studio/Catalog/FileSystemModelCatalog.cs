using System.Text.Json;
using DiffusionPrune.Formats;
using DiffusionPrune.Pipeline.StableDiffusion;

namespace DiffusionPrune.Studio.Catalog;

/// <summary>
/// Reads model folders laid out the diffusers way (<c>config.json</c> beside
/// <c>diffusion_pytorch_model.safetensors</c>). Only <c>_class_name</c> is read, with
/// System.Text.Json, so the Studio does not depend on the core library's model configs yet.
/// A Stable Diffusion pipeline folder (<c>model_index.json</c> at its root, no <c>config.json</c>) is one model: its
/// class is the pipeline's, its size every component's safetensors, and it is checked as the core loads it (component
/// classes and subfolders) without reading weights.
/// </summary>
public sealed class FileSystemModelCatalog : IModelCatalog
{
    private const string ConfigFileName = ModelFolder.Config;
    private const string ClassNameKey = "_class_name";

    private readonly IReadOnlyList<string> _outputRoots;
    private readonly Func<IReadOnlyList<ModelLink>>? _links;
    private readonly IReadOnlySet<string> _confined;

    /// <summary>
    /// Creates a catalog over <paramref name="samplesRoot"/><c>/models</c> and, after those, the Studio's own outputs:
    /// each folder of <paramref name="outputRoots"/> (e.g. <c>out/studio/pruned</c>), listed as <c>pruned/NAME</c>.
    /// </summary>
    /// <param name="links">Models added by path, listed last as <c>linked/NAME</c>.</param>
    /// <param name="confinedRoots">
    /// Those of <paramref name="outputRoots"/> that are users' model roots: a folder in one is listed only when it, and every
    /// file in it, really lies inside the root (no symbolic link out of it).
    /// </param>
    public FileSystemModelCatalog(string samplesRoot, IReadOnlyList<string>? outputRoots = null, Func<IReadOnlyList<ModelLink>>? links = null,
        IReadOnlyList<string>? confinedRoots = null)
    {
        ModelsRoot = Path.Combine(Path.GetFullPath(samplesRoot), "models");
        _outputRoots = (outputRoots ?? []).Concat(confinedRoots ?? []).Select(Path.GetFullPath).ToArray();
        _links = links;
        _confined = (confinedRoots ?? []).Select(Path.GetFullPath).ToHashSet(StringComparer.Ordinal);
    }

    /// <summary>The folders directly in <paramref name="root"/>; none when it cannot be read.</summary>
    private static IEnumerable<string> FoldersIn(string root)
    {
        try
        {
            return Directory.Exists(root) ? Directory.EnumerateDirectories(root).Order(StringComparer.Ordinal).ToList() : [];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }

    /// <inheritdoc />
    public string ModelsRoot { get; }

    /// <inheritdoc />
    public async Task<IReadOnlyList<ModelSummary>> ListModelsAsync(CancellationToken cancellationToken = default)
    {
        var models = new List<ModelSummary>();
        foreach (var folder in FoldersIn(ModelsRoot))
            {
                cancellationToken.ThrowIfCancellationRequested();
                models.Add(await ReadFolderAsync(folder, Path.GetFileName(folder), cancellationToken));
            }
        foreach (var root in _outputRoots)
            foreach (var folder in FoldersIn(root))
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (Path.GetFileName(folder).StartsWith('.')) continue; // a folder being written (AtomicFolder) or a checkpoint
                if (_confined.Contains(root) && ModelLinks.LeavesRoot(folder, root)) continue; // a link out of a user's model root
                models.Add(await ReadFolderAsync(folder, $"{Path.GetFileName(root)}/{Path.GetFileName(folder)}", cancellationToken));
            }
        foreach (var link in _links?.Invoke() ?? [])
            if (Directory.Exists(link.Path)) // a linked folder that was moved away is not listed
                models.Add(await ReadFolderAsync(link.Path, $"{StudioOptions.LinkedFolder}/{link.Name}", cancellationToken));
        return models;
    }

    /// <summary>The components of a Stable Diffusion pipeline that hold weights (the tokenizer and scheduler are configs).</summary>
    private static readonly string[] PipelineWeightedComponents = ["text_encoder", "unet", "vae"];

    private static async Task<ModelSummary> ReadFolderAsync(string folder, string name, CancellationToken cancellationToken)
    {
        if (!File.Exists(Path.Combine(folder, ConfigFileName)) && File.Exists(Path.Combine(folder, ModelFolder.PipelineIndex)))
            return ReadPipelineFolder(folder, name);
        long safetensorsBytes;
        try
        {
            safetensorsBytes = Directory.EnumerateFiles(folder, "*.safetensors").Sum(file => new FileInfo(file).Length);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // an unreadable folder (lost+found in a mounted root) is listed with its problem, never breaks the list
            return new ModelSummary(name, folder, null, 0, $"{folder} cannot be read ({e.Message.TrimEnd('.')}).");
        }
        var (className, problem) = await ReadClassNameAsync(Path.Combine(folder, ConfigFileName), cancellationToken);
        if (problem is null && safetensorsBytes == 0)
            problem = $"No .safetensors file in {folder}; add the weights beside config.json.";
        return new ModelSummary(name, folder, className, safetensorsBytes, problem);
    }

    /// <summary>
    /// A pipeline folder as one model: the class model_index.json names, the size of every present component's
    /// safetensors, and what the core's loader would refuse (a component missing, of a class it does not take, or
    /// without weights) as the problem.
    /// </summary>
    private static ModelSummary ReadPipelineFolder(string folder, string name)
    {
        string? className = null;
        try
        {
            var index = PipelineIndex.Load(folder);
            className = index.ClassName;
            StableDiffusionPipeline.CheckFolder(folder); // throws, naming the component, what Load would refuse before reading weights
            long bytes = 0;
            foreach (var component in index.Components.Values.Where(c => !c.IsAbsent))
            {
                string subfolder = Path.Combine(folder, component.Name);
                if (Directory.Exists(subfolder))
                    bytes += Directory.EnumerateFiles(subfolder, "*.safetensors").Sum(file => new FileInfo(file).Length);
            }
            string? problem = PipelineWeightedComponents
                .Where(c => !Directory.EnumerateFiles(Path.Combine(folder, c), "*.safetensors").Any())
                .Select(c => $"No .safetensors file in {Path.Combine(folder, c)}; a pipeline's {c} needs its weights as safetensors (convert .bin files).")
                .FirstOrDefault();
            return new ModelSummary(name, folder, className, bytes, problem);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException || UserErrors.Is(e))
        {
            return new ModelSummary(name, folder, className, 0, $"This pipeline folder cannot be used: {e.Message.TrimEnd('.')}.");
        }
    }

    private static async Task<(string? ClassName, string? Problem)> ReadClassNameAsync(
        string configPath, CancellationToken cancellationToken)
    {
        if (!File.Exists(configPath))
            return (null, $"{configPath} is missing; a model folder needs its diffusers config.json.");
        try
        {
            await using var stream = File.OpenRead(configPath);
            using var document = await JsonDocument.ParseAsync(stream, cancellationToken: cancellationToken);
            if (document.RootElement.ValueKind == JsonValueKind.Object
                && document.RootElement.TryGetProperty(ClassNameKey, out var className)
                && className.ValueKind == JsonValueKind.String)
            {
                return (className.GetString(), null);
            }
            return (null, $"{configPath} has no string \"{ClassNameKey}\"; add the diffusers class, e.g. \"UNet2DModel\".");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return (null, $"{configPath} cannot be read ({ex.Message.TrimEnd('.')}).");
        }
        catch (JsonException ex)
        {
            return (null, $"{configPath} is not valid JSON ({ex.Message}); re-export the model or fix the file.");
        }
        catch (IOException ex)
        {
            return (null, $"{configPath} could not be read ({ex.Message}).");
        }
        catch (UnauthorizedAccessException ex)
        {
            return (null, $"{configPath} could not be read ({ex.Message}); check its permissions.");
        }
    }
}
