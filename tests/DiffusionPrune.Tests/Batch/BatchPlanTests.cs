using DiffusionPrune.Batch;
using DiffusionPrune.Export;
using DiffusionPrune.Pruning.Layers;
using DiffusionPrune.Tests.Cli;
using DiffusionPrune.Training;

namespace DiffusionPrune.Tests.Batch;

/// <summary>Reading and validating batch plans: every mistake is caught before any work, with a message that says what to do.</summary>
public class BatchPlanTests
{
    private static string FixtureModel => Fixtures.Diffusers("unet2d-small", "model");
    private static string FixtureScheduler => Fixtures.Diffusers("unet2d-small", "scheduler_config.json");

    /// <summary>A valid plan on the fixture U-Net, with one top-level entry replaced or added.</summary>
    private static string Plan(string? replaceKey = null, string? replaceValue = null)
    {
        var entries = new Dictionary<string, string>
        {
            ["output"] = "\"out\"",
            ["models"] = $"[{{\"path\": \"{FixtureModel}\", \"scheduler_config\": \"{FixtureScheduler}\"}}]",
            ["methods"] = "[\"magnitude\", \"random\"]",
            ["targets"] = "[0.2]",
        };
        if (replaceKey is not null)
        {
            if (replaceValue is null) entries.Remove(replaceKey);
            else entries[replaceKey] = replaceValue;
        }
        return "{" + string.Join(", ", entries.Select(e => $"\"{e.Key}\": {e.Value}")) + "}";
    }

    private static string ErrorOf(string json, string planPath = "/tmp/plan.json")
    {
        var e = Assert.Throws<BatchPlanException>(() => BatchPlan.Parse(json, planPath));
        return e.Message;
    }

    [Fact]
    public void A_valid_plan_lists_the_original_first_then_methods_by_ascending_target()
    {
        var plan = BatchPlan.Parse(Plan("targets", "[0.3, 0.1]"), "/tmp/plans/plan.json");
        Assert.Equal("/tmp/plans/out", plan.Output);
        var items = plan.Items().Select(i => i.RelativeFolder).ToArray();
        Assert.Equal(new[] { "model/original", "model/magnitude-0.1", "model/magnitude-0.3", "model/random-0.1", "model/random-0.3" }, items);
        Assert.Equal(new[] { ExportFormat.Safetensors, ExportFormat.Onnx }, plan.ExportFormats);
        Assert.Equal(new[] { 1, 16 }, plan.Latency!.Batches);
        Assert.Equal(500, plan.Eval.Samples);
    }

    [Fact]
    public void Relative_paths_resolve_against_root_which_is_relative_to_the_plan_folder()
    {
        using var temp = Fixtures.Temp();
        string models = Path.Combine(temp.Path, "models");
        Directory.CreateDirectory(models);
        string copy = Path.Combine(models, "tiny");
        Directory.CreateDirectory(copy);
        foreach (var file in Directory.GetFiles(FixtureModel)) File.Copy(file, Path.Combine(copy, Path.GetFileName(file)));
        File.Copy(FixtureScheduler, Path.Combine(copy, "scheduler_config.json"));
        string planPath = Path.Combine(temp.Path, "plans", "p.json");
        const string json = """
            // comments and trailing commas are allowed
            { "root": "..", "output": "results/x", "models": ["models/tiny"], "methods": ["taylor"], "targets": [0.25,], }
            """;
        var plan = BatchPlan.Parse(json, planPath);
        Assert.Equal(Path.Combine(temp.Path, "results", "x"), plan.Output);
        Assert.Equal(copy, plan.Models.Single().Path);
        Assert.Equal("tiny", plan.Models.Single().Name);
        Assert.Equal("tiny/taylor-0.25", plan.Items()[1].RelativeFolder);

        // --output is a command-line path: relative to the working directory
        var overridden = BatchPlan.Parse(json, planPath, outputOverride: "elsewhere");
        Assert.Equal(Path.GetFullPath("elsewhere"), overridden.Output);
    }

    [Fact]
    public void The_committed_sample_plans_are_valid()
    {
        var quick = BatchPlan.Load(Path.Combine(Fixtures.RepoRoot, "samples", "plans", "quick.json"));
        Assert.Equal(Path.Combine(Fixtures.RepoRoot, "out", "batch-quick"), quick.Output);
        Assert.Equal(3, quick.Items().Count);
        var sweep = BatchPlan.Load(Path.Combine(Fixtures.RepoRoot, "samples", "plans", "mnist-sweep.json"));
        Assert.Equal(1 + 4 * 3, sweep.Items().Count);
        Assert.Equal(Path.Combine(Fixtures.RepoRoot, "samples", "models", "mnist-unet"), sweep.Models.Single().Path);
    }

    [Theory]
    [InlineData("methods", "[\"prunify\"]", "'prunify', which is not a pruning method; use ecodiff, ecodiff-layer, laptop, ldpruner, learnable-depth, magnitude, random, random-layer, taylor")]
    [InlineData("methods", "[]", "\"methods\" is empty")]
    [InlineData("methods", "[\"random\", \"Random\"]", "lists 'random' twice")]
    [InlineData("targets", "[0]", "strictly between 0 and 1")]
    [InlineData("targets", "[1]", "strictly between 0 and 1")]
    [InlineData("targets", "[-0.2]", "strictly between 0 and 1")]
    [InlineData("targets", "[\"0.2\"]", "strictly between 0 and 1")]
    [InlineData("targets", null, "\"targets\" is missing")]
    [InlineData("models", null, "\"models\" is missing")]
    [InlineData("models", "[]", "\"models\" is empty")]
    [InlineData("models", "[\"/no/such/model\"]", "model '/no/such/model' (resolved to /no/such/model) cannot be used: No model folder at")]
    [InlineData("output", null, "give \"output\"")]
    [InlineData("method", "[\"random\"]", "unknown key \"method\"")]
    [InlineData("eval", "{\"samples\": 1}", "\"eval\".\"samples\" must be a whole number of at least 2")]
    [InlineData("eval", "{\"scheduler\": \"euler\"}", "use ddim, ddpm or dpm++2m")]
    [InlineData("prune", "{\"iterations\": 0}", "\"prune\".\"iterations\" must be a whole number of at least 1")]
    [InlineData("prune", "{\"budget\": \"flops\"}", "\"prune\".\"budget\" is 'flops'; use params, macs or latency")]
    [InlineData("prune", "{\"selection\": \"best\"}", "\"prune\".\"selection\" is 'best'; use knapsack or greedy")]
    [InlineData("distill", "{\"kd\": \"feature\"}", "\"distill\".\"kd\" is 'feature'; use normalized, plain or none")]
    [InlineData("distill", "{\"steps\": 0}", "\"distill\".\"steps\" must be a whole number of at least 1")]
    [InlineData("distill", "{\"lr\": -1}", "\"distill\".\"lr\" must be a positive number")]
    [InlineData("distill", "{\"data\": \"/no/such/images\"}", "\"distill\".\"data\" '/no/such/images' does not exist")]
    [InlineData("distill", "{\"teacher\": \"x\"}", "unknown key \"teacher\"")]
    [InlineData("export", "{\"formats\": [\"tflite\"]}", "'tflite' is not a known format")]
    [InlineData("export", "{\"formats\": [\"safetensors\"]}", "must include \"onnx\" (or set \"latency\": null)")]
    [InlineData("latency", "{\"batches\": [0]}", "batch sizes of 1 or more")]
    public void A_bad_plan_names_the_key_and_the_fix(string key, string? value, string expected)
    {
        string message = ErrorOf(Plan(key, value));
        Assert.StartsWith("plan.json: ", message);
        Assert.Contains(expected, message);
    }

    [Fact]
    public void Layer_budgets_and_an_optional_distillation_stage_are_read_and_change_the_item_settings()
    {
        var plain = BatchPlan.Parse(Plan("methods", "[\"laptop\", \"taylor\"]"), "/tmp/plan.json");
        Assert.Null(plain.Distill);
        Assert.Equal(LayerBudget.Params, plain.Prune.Budget);

        var json = Plan("methods", "[\"laptop\", \"taylor\"]").TrimEnd('}') +
            ", \"prune\": {\"budget\": \"macs\", \"selection\": \"greedy\", \"round_to\": 8}, \"distill\": {\"kd\": \"plain\", \"steps\": 50, \"batch\": 8}}";
        var plan = BatchPlan.Parse(json, "/tmp/plan.json");
        Assert.Equal(LayerBudget.Macs, plan.Prune.Budget);
        Assert.Equal(LayerSelection.Greedy, plan.Prune.Selection);
        Assert.Equal((KnowledgeDistillation.Plain, 50, 8, "mnist"), (plan.Distill!.Kd, plan.Distill.Steps, plan.Distill.BatchSize, plan.Distill.Data));

        var item = plan.Items().First(i => i.Method == "laptop");
        Assert.Equal("macs", plan.SettingsOf(item)["prune"]!["budget"]!.GetValue<string>());
        Assert.Equal("plain", plan.SettingsOf(item)["distill"]!["kd"]!.GetValue<string>());
        Assert.Equal(8, plan.Prune.RoundTo);
        Assert.Null(plan.SettingsOf(item)["prune"]!["round_to"]); // widths only: a layer method ignores it
        Assert.Equal(8, plan.SettingsOf(plan.Items().First(i => i.Method == "taylor"))["prune"]!["round_to"]!.GetValue<int>());
        Assert.Null(plan.SettingsOf(plan.Items()[0])["distill"]); // the original is not distilled
        // A finished item of the plan without distillation is stale under this one.
        Assert.NotEqual(plain.SettingsOf(item).ToJsonString(), plan.SettingsOf(item).ToJsonString());
    }

    [Fact]
    public void Latency_can_be_turned_off_and_then_onnx_is_optional()
    {
        var json = Plan("latency", "null").TrimEnd('}') + ", \"export\": {\"formats\": \"safetensors\"}}";
        var plan = BatchPlan.Parse(json, "/tmp/plan.json");
        Assert.Null(plan.Latency);
        Assert.Equal(new[] { ExportFormat.Safetensors }, plan.ExportFormats);
    }

    [Fact]
    public void Models_that_cannot_be_evaluated_or_sampled_are_refused_up_front()
    {
        // dit-small makes 4 x 16 x 16 latents: the evaluator compares with MNIST
        string message = ErrorOf(Plan("models", $"[{{\"path\": \"{Fixtures.Diffusers("dit-small", "model")}\", \"scheduler_config\": \"{FixtureScheduler}\"}}]"));
        Assert.Contains("makes 4 x 16 x 16 samples, but the evaluation compares with MNIST (1 x 32 x 32)", message);
        // the fixture U-Net keeps its scheduler config beside the model folder, not in it
        message = ErrorOf(Plan("models", $"[\"{FixtureModel}\"]"));
        Assert.Contains("has no scheduler_config.json", message);
        message = ErrorOf(Plan("models", $"[{{\"path\": \"{FixtureModel}\", \"name\": \"a/b\", \"scheduler_config\": \"{FixtureScheduler}\"}}]"));
        Assert.Contains("model name 'a/b' must be letters", message);
        message = ErrorOf(Plan("models", $"[{{\"path\": \"{FixtureModel}\", \"scheduler_config\": \"{FixtureScheduler}\"}}, {{\"path\": \"{FixtureModel}\", \"scheduler_config\": \"{FixtureScheduler}\"}}]"));
        Assert.Contains("two models are named 'model'", message);
    }

    [Fact]
    public void Invalid_json_reports_the_line()
    {
        string message = ErrorOf("{\n  \"models\": [\n  oops\n]}");
        Assert.StartsWith("plan.json is not valid JSON (line 3)", message);
    }

    [Fact]
    public void The_cli_exits_2_with_one_error_line_for_a_bad_plan_or_a_missing_file()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("bad.json"), Plan("methods", "[\"prunify\"]"));
        var (code, stdout, stderr) = CliTests.Dprune("batch", temp.File("bad.json"));
        Assert.Equal(2, code);
        Assert.Equal("", stdout.Trim());
        Assert.StartsWith("error: bad.json: \"methods\" has 'prunify'", stderr.Trim());
        Assert.False(Directory.Exists(temp.File("out")));

        (code, _, stderr) = CliTests.Dprune("batch", temp.File("missing.json"));
        Assert.Equal(2, code);
        Assert.Contains("No batch plan at", stderr);
    }
}
