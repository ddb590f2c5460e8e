using System.IO.Compression;
using System.Text.RegularExpressions;
using DiffusionPrune.Formats;

namespace DiffusionPrune.Studio.Catalog;

/// <summary>An upload the Studio refuses; <see cref="StatusCode"/> is the HTTP status the API answers with.</summary>
public sealed class ModelUploadException(string message, int statusCode = 400) : Exception(Messages.OneLine(message))
{
    /// <summary>400 (bad zip or model), 409 (name taken) or 413 (too large).</summary>
    public int StatusCode { get; } = statusCode;
}

/// <summary>
/// Takes a model as a zip (a diffusers folder: config.json + safetensors, at the top level or in one folder), unpacks
/// it safely and keeps it only when the strict loader accepts it. Uploads are untrusted: the zip's size, entry count,
/// unpacked size (counted while extracting, not read from its headers) and path depth are capped
/// (<see cref="StudioOptions"/>), and no entry may leave the target (absolute paths, <c>..</c>, backslashes, symbolic links).
/// A refused upload leaves nothing behind.
/// </summary>
public sealed partial class ModelUploadService(string uploadsRoot, StudioOptions limits)
{
    // Validation loads the whole model: one upload at a time, so concurrent uploads cannot together exhaust memory.
    private readonly SemaphoreSlim _validating = new(1, 1);

    /// <summary>Where accepted uploads go, one folder per name (listed by the catalog as <c>uploaded/NAME</c>).</summary>
    public string UploadsRoot { get; } = Path.GetFullPath(uploadsRoot);

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    private static partial Regex NamePattern();

    /// <summary>Why <paramref name="name"/> cannot name an upload, or null when it can.</summary>
    public static string? CheckName(string? name) => name is not null && NamePattern().IsMatch(name) && !name.Contains("..", StringComparison.Ordinal)
        ? null
        : $"'{name}' cannot name a model: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.";

    /// <summary>
    /// Reads a zip from <paramref name="zip"/>, unpacks it, validates the model with the strict loader and keeps it as
    /// <c>uploaded/<paramref name="name"/></c>, which it returns.
    /// </summary>
    /// <exception cref="ModelUploadException">The upload is refused; nothing was kept.</exception>
    public async Task<string> ImportZipAsync(Stream zip, string name, CancellationToken cancellationToken = default)
    {
        if (CheckName(name) is { } problem) throw new ModelUploadException(problem);
        string target = Path.Combine(UploadsRoot, name);
        if (Directory.Exists(target) || File.Exists(target))
            throw new ModelUploadException($"A model named '{name}' was uploaded already; choose another name.", 409);
        Directory.CreateDirectory(UploadsRoot);
        string stamp = Guid.NewGuid().ToString("N");
        string zipPath = Path.Combine(UploadsRoot, $".upload-{stamp}.zip");
        string staging = Path.Combine(UploadsRoot, $".partial-{stamp}");
        try
        {
            await CopyLimitedAsync(zip, zipPath, cancellationToken);
            Extract(zipPath, staging, cancellationToken);
            string folder = ModelFolderIn(staging);
            await _validating.WaitAsync(cancellationToken);
            try
            {
                await ValidateAsync(folder, name, cancellationToken);
            }
            finally
            {
                _validating.Release();
            }
            try
            {
                Directory.Move(folder, target);
            }
            catch (IOException) when (Directory.Exists(target))
            {
                throw new ModelUploadException($"A model named '{name}' was uploaded already; choose another name.", 409);
            }
            return $"{StudioOptions.UploadedFolder}/{name}";
        }
        finally
        {
            TryDelete(zipPath);
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        }
    }

    private async Task CopyLimitedAsync(Stream source, string path, CancellationToken cancellationToken)
    {
        await using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true);
        var buffer = new byte[1 << 16];
        long total = 0;
        int read;
        while ((read = await source.ReadAsync(buffer, cancellationToken)) > 0)
        {
            total += read;
            if (total > limits.MaxUploadBytes)
                throw new ModelUploadException($"The upload is larger than the {ByteSize.Format(limits.MaxUploadBytes)} limit (Studio:MaxUploadBytes).", 413);
            await file.WriteAsync(buffer.AsMemory(0, read), cancellationToken);
        }
        if (total == 0) throw new ModelUploadException("The upload is empty; send a zip of the model folder.");
    }

    private void Extract(string zipPath, string staging, CancellationToken cancellationToken)
    {
        // the count from the end-of-central-directory record, before the archive reads (and allocates) every entry
        if (DeclaredEntries(zipPath) is long declared && declared > limits.MaxZipEntries)
            throw new ModelUploadException($"The zip holds {(declared == ushort.MaxValue ? "65535 or more" : declared.ToString(System.Globalization.CultureInfo.InvariantCulture))} entries, more than the {limits.MaxZipEntries} allowed (Studio:MaxZipEntries).");
        ZipArchive archive;
        try
        {
            archive = ZipFile.OpenRead(zipPath);
        }
        catch (InvalidDataException e)
        {
            throw new ModelUploadException($"The upload is not a zip file ({e.Message.TrimEnd('.')}).");
        }
        using (archive)
        {
            if (archive.Entries.Count > limits.MaxZipEntries)
                throw new ModelUploadException($"The zip holds {archive.Entries.Count} entries, more than the {limits.MaxZipEntries} allowed (Studio:MaxZipEntries).");
            string root = Path.GetFullPath(staging) + Path.DirectorySeparatorChar;
            Directory.CreateDirectory(staging);
            long unpacked = 0;
            var buffer = new byte[1 << 16];
            foreach (var entry in archive.Entries)
            {
                cancellationToken.ThrowIfCancellationRequested();
                string[] parts = SafeParts(entry);
                string destination = Path.GetFullPath(Path.Combine([staging, .. parts]));
                if (!destination.StartsWith(root, StringComparison.Ordinal))
                    throw new ModelUploadException($"The zip entry '{entry.FullName}' would be written outside the model folder.");
                if (entry.FullName.EndsWith('/'))
                {
                    Directory.CreateDirectory(destination);
                    continue;
                }
                if (File.Exists(destination) || Directory.Exists(destination))
                    throw new ModelUploadException($"The zip holds '{entry.FullName}' twice; a model folder names each file once.");
                try
                {
                    Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
                    using var input = OpenEntry(entry);
                    using var output = new FileStream(destination, FileMode.CreateNew, FileAccess.Write);
                    int read;
                    while ((read = input.Read(buffer)) > 0)
                    {
                        unpacked += read;
                        if (unpacked > limits.MaxUnpackedBytes)
                            throw new ModelUploadException($"The zip unpacks to more than the {ByteSize.Format(limits.MaxUnpackedBytes)} allowed (Studio:MaxUnpackedBytes).");
                        output.Write(buffer, 0, read);
                    }
                }
                catch (Exception e) when (e is InvalidDataException or IOException)
                {
                    // a damaged entry (bad deflate data, wrong CRC) or a file that is also a folder in the zip
                    throw new ModelUploadException($"The zip entry '{entry.FullName}' cannot be unpacked ({e.Message.Replace(root, "", StringComparison.Ordinal).TrimEnd('.')}).");
                }
            }
        }
    }

    /// <summary>The entry count the zip's end-of-central-directory record declares, or null when the record is not found.</summary>
    private static long? DeclaredEntries(string zipPath)
    {
        using var file = File.OpenRead(zipPath);
        int tail = (int)Math.Min(file.Length, 22 + ushort.MaxValue); // the record (22 bytes) and its longest comment
        var bytes = new byte[tail];
        file.Seek(-tail, SeekOrigin.End);
        file.ReadExactly(bytes);
        for (int i = tail - 22; i >= 0; i--)
            if (bytes[i] == 0x50 && bytes[i + 1] == 0x4b && bytes[i + 2] == 0x05 && bytes[i + 3] == 0x06)
                return System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(i + 10));
        return null;
    }

    private static Stream OpenEntry(ZipArchiveEntry entry)
    {
        try
        {
            return entry.Open();
        }
        catch (InvalidDataException e)
        {
            throw new ModelUploadException($"The zip entry '{entry.FullName}' cannot be read ({e.Message}).");
        }
    }

    /// <summary>The entry's path segments, refused when the path could leave the target or nests too deep.</summary>
    private string[] SafeParts(ZipArchiveEntry entry)
    {
        string name = entry.FullName;
        const int fileTypeMask = 0xF000, symbolicLink = 0xA000;
        if (((entry.ExternalAttributes >> 16) & fileTypeMask) == symbolicLink)
            throw new ModelUploadException($"The zip entry '{name}' is a symbolic link; a model folder holds files only.");
        if (name.Length == 0 || name.Contains('\\') || name.StartsWith('/') || name.Contains(':') || name.Contains('\0'))
            throw new ModelUploadException($"The zip entry '{name}' has an absolute or non-portable path; entries must be relative paths with '/'.");
        string[] parts = name.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Any(p => p is ".." or "."))
            throw new ModelUploadException($"The zip entry '{name}' uses '.' or '..'; entries must stay inside the model folder.");
        if (parts.Length > limits.MaxZipPathDepth)
            throw new ModelUploadException($"The zip entry '{name}' is nested {parts.Length} deep, more than the {limits.MaxZipPathDepth} allowed (Studio:MaxZipPathDepth).");
        return parts;
    }

    /// <summary>The unpacked folder holding config.json: the zip's top level, or its one folder.</summary>
    private static string ModelFolderIn(string staging)
    {
        if (File.Exists(Path.Combine(staging, ModelFolder.Config))) return staging;
        var folders = Directory.GetDirectories(staging);
        if (folders.Length == 1 && Directory.GetFiles(staging).Length == 0 && File.Exists(Path.Combine(folders[0], ModelFolder.Config)))
            return folders[0];
        throw new ModelUploadException($"The zip has no {ModelFolder.Config} at its top level or in its one folder; zip the diffusers model folder itself.");
    }

    /// <summary>The strict loader's verdict (after its resource check), through the pipeline's Load stage as every job loads a model.</summary>
    private static async Task ValidateAsync(string folder, string name, CancellationToken cancellationToken)
    {
        try
        {
            using var pipeline = new Pipeline.DiffusionPipeline();
            await pipeline.LoadAsync(folder, cancel: cancellationToken);
        }
        catch (Exception e) when (UserErrors.Is(e))
        {
            // the message names the model by its upload name, not the server's staging folder
            throw new ModelUploadException($"The model does not load: {e.Message.Replace(folder, name, StringComparison.Ordinal)}");
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
            // best effort: a leftover temporary zip starts with '.', which the catalog skips
        }
    }
}
