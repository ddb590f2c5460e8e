namespace DiffusionPrune.Studio.Catalog;

/// <summary>Lists the models the Studio can work on.</summary>
public interface IModelCatalog
{
    /// <summary>The folder searched for model folders (<c>&lt;samples root&gt;/models</c>).</summary>
    string ModelsRoot { get; }

    /// <summary>
    /// Every model folder under <see cref="ModelsRoot"/>, sorted by name. A folder with a missing or
    /// corrupt <c>config.json</c> is still listed, with <see cref="ModelSummary.Problem"/> saying why;
    /// a missing <see cref="ModelsRoot"/> yields an empty list.
    /// </summary>
    Task<IReadOnlyList<ModelSummary>> ListModelsAsync(CancellationToken cancellationToken = default);
}
