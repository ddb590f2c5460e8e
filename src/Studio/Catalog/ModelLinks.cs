using System.Text.Json;
using DiffusionPrune.Formats;

namespace DiffusionPrune.Studio.Catalog;

/// <summary>A model added by path: the name it is listed by (<c>linked/NAME</c>) and its folder, which stays where it is.</summary>
public sealed record ModelLink(string Name, string Path);

/// <summary>
/// Models added by path from the configured model roots (<see cref="StudioOptions.ModelRoots"/>): a folder is accepted
/// only when its real path (every symbolic link followed) lies inside a root's real path, and only when the strict
/// loader accepts the model. The links are kept in a JSON file in the Studio's data folder.
/// </summary>
public sealed class ModelLinks(IReadOnlyList<string> roots, string storePath)
{
    private readonly Lock _gate = new();
    private readonly SemaphoreSlim _validating = new(1, 1);

    /// <summary>The configured roots, as given.</summary>
    public IReadOnlyList<string> Roots { get; } = roots;

    /// <summary>Every link, in the order added.</summary>
    public IReadOnlyList<ModelLink> List()
    {
        lock (_gate)
        {
            if (!File.Exists(storePath)) return [];
            try
            {
                return JsonSerializer.Deserialize<List<ModelLink>>(File.ReadAllText(storePath)) ?? [];
            }
            catch (JsonException)
            {
                return []; // a damaged store lists nothing rather than stopping the catalog
            }
        }
    }

    /// <summary>
    /// Adds the model folder at <paramref name="path"/> as <c>linked/<paramref name="name"/></c>, which it returns.
    /// </summary>
    /// <exception cref="ModelUploadException">Outside every root, not a folder, taken name, or the loader refuses it.</exception>
    public async Task<string> AddAsync(string path, string name, CancellationToken cancellationToken = default)
    {
        if (ModelUploadService.CheckName(name) is { } problem) throw new ModelUploadException(problem);
        if (Roots.Count == 0)
            throw new ModelUploadException("No model roots are configured; add folders to Studio:ModelRoots in appsettings.json to add models by path.");
        if (string.IsNullOrWhiteSpace(path) || !System.IO.Path.IsPathFullyQualified(path))
            throw new ModelUploadException($"'{path}' is not an absolute path; give the model folder's full path.");
        string real;
        try
        {
            real = RealPath(path);
            var inside = Roots.Where(Directory.Exists).Select(root => (Given: root, Real: RealPath(root)))
                .FirstOrDefault(root => real.StartsWith(root.Real + System.IO.Path.DirectorySeparatorChar, StringComparison.Ordinal));
            if (inside.Real is null)
                throw new ModelUploadException($"'{path}' is not inside a configured model root ({string.Join(", ", Roots)}), after following symbolic links.");
            if (!Directory.Exists(real) || !(File.Exists(System.IO.Path.Combine(real, ModelFolder.Config)) || File.Exists(System.IO.Path.Combine(real, ModelFolder.PipelineIndex))))
                throw new ModelUploadException($"'{path}' is not a model folder: it has no {ModelFolder.Config} (nor a pipeline's {ModelFolder.PipelineIndex}).");
            if (LeavesRoot(real, inside.Real))
                throw new ModelUploadException($"'{path}' holds a symbolic link that leads out of the model root; copy the file into the folder instead.");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new ModelUploadException($"'{path}' cannot be resolved ({e.Message.TrimEnd('.')}).");
        }
        if (List().Any(l => l.Name == name))
            throw new ModelUploadException($"A model named '{name}' was added already; choose another name.", 409);
        await _validating.WaitAsync(cancellationToken);
        try
        {
            if (!File.Exists(System.IO.Path.Combine(real, ModelFolder.Config)) && File.Exists(System.IO.Path.Combine(real, ModelFolder.PipelineIndex)))
            {
                // a Stable Diffusion pipeline: every component loaded strictly, as sampling it will
                await Task.Run(() => Pipeline.StableDiffusion.StableDiffusionPipeline.Load(real).Dispose(), cancellationToken);
            }
            else
            {
                using var pipeline = new Pipeline.DiffusionPipeline();
                await pipeline.LoadAsync(real, cancel: cancellationToken);
            }
        }
        catch (Exception e) when (UserErrors.Is(e))
        {
            throw new ModelUploadException($"The model does not load: {e.Message}");
        }
        finally
        {
            _validating.Release();
        }
        lock (_gate)
        {
            var links = List().ToList();
            if (links.Any(l => l.Name == name))
                throw new ModelUploadException($"A model named '{name}' was added already; choose another name.", 409);
            links.Add(new ModelLink(name, real));
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(storePath))!);
            Runtime.AtomicFile.Replace(storePath, JsonSerializer.Serialize(links, new JsonSerializerOptions { WriteIndented = true }));
        }
        return $"{StudioOptions.LinkedFolder}/{name}";
    }

    /// <summary>
    /// Whether <paramref name="folder"/>, or any file or folder in it (two levels deep, as a model folder is laid out), really
    /// lies outside <paramref name="root"/> once symbolic links are followed; unreadable entries count as leaving.
    /// </summary>
    public static bool LeavesRoot(string folder, string root)
    {
        try
        {
            string realRoot = RealPath(root) + System.IO.Path.DirectorySeparatorChar;
            bool Inside(string p) => RealPath(p).StartsWith(realRoot, StringComparison.Ordinal);
            if (!Inside(folder)) return true;
            var options = new EnumerationOptions { RecurseSubdirectories = true, MaxRecursionDepth = 2, IgnoreInaccessible = false, AttributesToSkip = 0 };
            return Directory.EnumerateFileSystemEntries(folder, "*", options).Any(entry => !Inside(entry));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return true;
        }
    }

    /// <summary>The path with every symbolic link along it followed (like realpath(3)); at most 40 links.</summary>
    public static string RealPath(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        int links = 0;
        while (true)
        {
            string root = System.IO.Path.GetPathRoot(full)!;
            string current = root;
            bool restarted = false;
            var parts = full[root.Length..].Split(System.IO.Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
            for (int i = 0; i < parts.Length; i++)
            {
                string next = System.IO.Path.Combine(current, parts[i]);
                FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
                if (info.LinkTarget is { } target)
                {
                    if (++links > 40) throw new IOException("too many levels of symbolic links");
                    string resolved = System.IO.Path.IsPathRooted(target) ? target : System.IO.Path.Combine(current, target);
                    full = System.IO.Path.GetFullPath(System.IO.Path.Combine([resolved, .. parts[(i + 1)..]]));
                    restarted = true;
                    break;
                }
                current = next;
            }
            if (!restarted) return System.IO.Path.TrimEndingDirectorySeparator(current);
        }
    }
}
