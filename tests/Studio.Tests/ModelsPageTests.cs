using DiffusionPrune.Studio.Catalog;
using Microsoft.Extensions.DependencyInjection;
using HomePage = DiffusionPrune.Studio.Components.Pages.Home.Home;
using ModelsPage = DiffusionPrune.Studio.Components.Pages.Models.Models;

namespace DiffusionPrune.Studio.Tests;

public sealed class ModelsPageTests : MudTestContext
{
    private readonly TempSamplesFolder _samples = new();

    private string UploadsRoot => Path.Combine(_samples.Root, "out", StudioOptions.UploadedFolder);

    private string Library => Path.Combine(_samples.Root, "library");

    public ModelsPageTests()
    {
        var links = new ModelLinks([Library], Path.Combine(_samples.Root, "data", "linked-models.json"));
        Context.Services.AddSingleton(links);
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root, [UploadsRoot], links.List));
        Context.Services.AddSingleton(new ModelUploadService(UploadsRoot, new StudioOptions()));
        Context.Services.AddSingleton(Microsoft.Extensions.Options.Options.Create(new StudioOptions()));
    }

    private static byte[] TinyModelZip()
    {
        string folder = Path.Combine(Path.GetTempPath(), "dprune-upload-" + Guid.NewGuid().ToString("N"));
        try
        {
            TestModels.SaveTinyUNet(folder, sampleSize: 16, scheduler: false);
            using var buffer = new MemoryStream();
            System.IO.Compression.ZipFile.CreateFromDirectory(folder, buffer);
            return buffer.ToArray();
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void A_zip_uploaded_on_the_page_is_checked_then_listed_and_a_refusal_is_shown_in_place()
    {
        var page = Context.Render<ModelsPage>();
        page.WaitForAssertion(() => Assert.NotNull(page.Find(".upload-panel")), WaitTimeout);

        page.FindComponent<Microsoft.AspNetCore.Components.Forms.InputFile>().UploadFiles(InputFileContent.CreateFromBinary(TinyModelZip(), "tiny-zip.zip"));
        page.WaitForAssertion(() => Assert.Contains("Added uploaded/tiny-zip", page.Find(".upload-result").TextContent), WaitTimeout);
        page.WaitForAssertion(() => Assert.Contains("uploaded/tiny-zip", page.Find(".models-table").TextContent), WaitTimeout);

        page.FindComponent<Microsoft.AspNetCore.Components.Forms.InputFile>().UploadFiles(InputFileContent.CreateFromText("not a zip", "notes.zip"));
        page.WaitForAssertion(() => Assert.Contains("Not added: The upload is not a zip file", page.Find(".upload-result").TextContent), WaitTimeout);
        Assert.Contains("mud-alert-text-error", page.Find(".upload-result").OuterHtml);
        Assert.Equal("tiny-zip", Path.GetFileName(Assert.Single(Directory.GetFileSystemEntries(UploadsRoot))));
    }

    [Fact]
    public void Lists_each_model_folder_with_its_class_name_and_weight_size()
    {
        _samples.AddModel("ddpm-tiny", """{ "_class_name": "UNet2DModel", "sample_size": 32 }""", weightBytes: 2048);
        _samples.AddModel("ldm-small", """{ "_class_name": "UNet2DConditionModel" }""", weightBytes: 100);

        var page = Context.Render<ModelsPage>();

        page.WaitForAssertion(() => Assert.Equal(2, page.FindAll(".models-table tbody tr").Count), WaitTimeout);
        var rows = page.FindAll(".models-table tbody tr");
        Assert.Contains("ddpm-tiny", rows[0].TextContent);
        Assert.Contains("UNet2DModel", rows[0].TextContent);
        Assert.Contains("2 KiB", rows[0].TextContent);
        Assert.Contains("ldm-small", rows[1].TextContent);
        Assert.Contains("UNet2DConditionModel", rows[1].TextContent);
        Assert.Contains("100 B", rows[1].TextContent);
        Assert.Empty(page.FindAll(".no-models"));
    }

    [Fact]
    public void Shows_the_empty_state_when_the_models_folder_is_empty()
    {
        var page = Context.Render<ModelsPage>();

        page.WaitForAssertion(() => Assert.Contains(
            "No models yet — train the defaults with dprune train", page.Find(".no-models").TextContent), WaitTimeout);
        Assert.Empty(page.FindAll(".models-table"));
    }

    [Fact]
    public void Lists_a_folder_with_corrupt_config_and_says_what_is_wrong()
    {
        _samples.AddModel("broken", "{ not json", weightBytes: 10);

        var page = Context.Render<ModelsPage>();

        page.WaitForAssertion(() => Assert.Contains("is not valid JSON", page.Find(".models-table tbody tr").TextContent), WaitTimeout);
    }

    [Fact]
    public void Home_shows_a_card_per_model()
    {
        _samples.AddModel("ddpm-tiny", """{ "_class_name": "UNet2DModel" }""", weightBytes: 1);
        _samples.AddModel("ldm-small", """{ "_class_name": "UNet2DConditionModel" }""", weightBytes: 1);

        var page = Context.Render<HomePage>();

        page.WaitForAssertion(() => Assert.Equal(2, page.FindAll(".model-card").Count), WaitTimeout);
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        _samples.Dispose();
    }
}
