using System.Text.Json.Nodes;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Formats;
using DiffusionPrune.Metrics;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Formats;

/// <summary>Reports cannot be lost to a number: non-finite figures are written as null with a note.</summary>
public class ReportJsonTests
{
    [Fact]
    public void Non_finite_numbers_anywhere_become_null_with_a_note_and_the_rest_is_kept()
    {
        var report = new JsonObject
        {
            ["psnr_to_reference"] = double.PositiveInfinity,
            ["fid_proxy"] = new JsonObject { ["value"] = 12.5, ["lower"] = double.NaN },
            ["series"] = new JsonArray(1.0, double.NegativeInfinity, 3.0),
            ["name"] = "m",
        };
        var clean = JsonNode.Parse(ReportJson.ToText(report))!.AsObject();
        Assert.Null(clean["psnr_to_reference"]);
        Assert.Equal(12.5, clean["fid_proxy"]!["value"]!.GetValue<double>());
        Assert.Null(clean["fid_proxy"]!["lower"]);
        Assert.Null(clean["series"]![1]);
        Assert.Equal(3.0, clean["series"]![2]!.GetValue<double>());
        Assert.Equal("m", clean["name"]!.GetValue<string>());
        var notes = clean[ReportJson.NotesField]!.AsArray().Select(n => n!.GetValue<string>()).ToList();
        Assert.Equal(3, notes.Count);
        Assert.Contains(notes, n => n.StartsWith("psnr_to_reference was +infinity", StringComparison.Ordinal) && n.Contains("identical images"));
        Assert.Contains(notes, n => n.StartsWith("fid_proxy.lower was NaN", StringComparison.Ordinal));
        Assert.Contains(notes, n => n.StartsWith("series[1] was -infinity", StringComparison.Ordinal));
        Assert.True(double.IsPositiveInfinity(report["psnr_to_reference"]!.GetValue<double>())); // the caller's object is left alone
    }

    [Fact]
    public void A_model_compared_with_itself_keeps_its_report()
    {
        using var temp = Fixtures.Temp();
        var (planPath, _) = Batch.BatchRunnerTests.TinyPlan(temp.Path);
        string model = Path.Combine(Path.GetDirectoryName(planPath)!, "models", "tiny-unet");
        var report = ModelEvaluator.Evaluate(new EvalRequest
        {
            ModelPath = model,
            ReferenceModelPath = model, // the natural baseline row: identical images, PSNR = +infinity
            Samples = 8,
            Steps = 2,
            BatchSize = 8,
            BootstrapResamples = 20,
        }, CPU);
        Assert.True(double.IsPositiveInfinity(report.Psnr!.Value));
        Assert.Equal(1.0, report.Ssim!.Value, 6);

        string path = temp.File("eval.json");
        report.Save(path);
        var saved = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        Assert.Null(saved["psnr_to_reference"]);
        Assert.Equal(1.0, saved["ssim_to_reference"]!.GetValue<double>(), 6);
        Assert.Contains("identical images", saved[ReportJson.NotesField]![0]!.GetValue<string>());
        Assert.Equal(report.Fid.Value, saved["fid_proxy"]!["value"]!.GetValue<double>());
    }
}
