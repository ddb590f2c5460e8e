using DiffusionPrune.Studio.Catalog;
using Microsoft.Extensions.DependencyInjection;
using HomePage = DiffusionPrune.Studio.Components.Pages.Home.Home;
using ModelsPage = DiffusionPrune.Studio.Components.Pages.Models.Models;

namespace DiffusionPrune.Studio.Tests;

public sealed class ModelsPageTests : MudTestContext
{
    private readonly TempSamplesFolder _samples = new();

    public ModelsPageTests()
    {
        Context.Services.AddSingleton<IModelCatalog>(new FileSystemModelCatalog(_samples.Root));
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
