namespace DiffusionPrune.Studio.Tests;

/// <summary>A throw-away samples root (<c>&lt;temp&gt;/models/...</c>), deleted on dispose.</summary>
internal sealed class TempSamplesFolder : IDisposable
{
    public TempSamplesFolder()
    {
        Root = Directory.CreateTempSubdirectory("studio-tests-").FullName;
        Directory.CreateDirectory(ModelsRoot);
    }

    public string Root { get; }

    public string ModelsRoot => Path.Combine(Root, "models");

    /// <summary>Adds models/<paramref name="name"/> with a config.json and a dummy safetensors of <paramref name="weightBytes"/> bytes.</summary>
    public string AddModel(string name, string configJson, int weightBytes)
    {
        var folder = Directory.CreateDirectory(Path.Combine(ModelsRoot, name)).FullName;
        File.WriteAllText(Path.Combine(folder, "config.json"), configJson);
        File.WriteAllBytes(Path.Combine(folder, "diffusion_pytorch_model.safetensors"), new byte[weightBytes]);
        return folder;
    }

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); }
        catch (IOException) { /* best effort: a leftover temp folder harms nothing */ }
    }
}
