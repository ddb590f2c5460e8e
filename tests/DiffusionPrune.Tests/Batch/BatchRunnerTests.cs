using System.Globalization;
using System.Text.Json.Nodes;
using DiffusionPrune.Batch;
using DiffusionPrune.Families;
using DiffusionPrune.Models;
using DiffusionPrune.Tests.Cli;

namespace DiffusionPrune.Tests.Batch;

/// <summary>
/// A whole (tiny) sweep, then resumed: finished items are skipped (through the real executable), an item whose marker
/// is gone is redone, a changed setting is seen.
/// </summary>
public class BatchRunnerTests
{
    /// <summary>
    /// A tiny U-Net of the evaluator's shape (1 x 32 x 32, random weights, attention in one block) and a plan over it:
    /// the pipeline runs for real, but sampling and timing take moments, so the test's time goes to the evaluator's
    /// fixed work (features of the MNIST test split).
    /// </summary>
    internal static (string plan, long parameters) TinyPlan(string folder)
    {
        const string config = """
            {"_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 1, "out_channels": 1,
             "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
            """;
        TorchSharp.torch.manual_seed(5);
        using var model = ModelFamilies.Create(ConfigJson.Parse(config));
        string modelFolder = Path.Combine(folder, "models", "tiny-unet");
        DiffusersModelLoader.Save(model, modelFolder);
        File.Copy(Fixtures.Diffusers("unet2d-small", "scheduler_config.json"), Path.Combine(modelFolder, "scheduler_config.json"));
        const string json = """
            {
              "output": "out",
              "models": ["models/tiny-unet"],
              "methods": ["magnitude", "random"],
              "targets": [0.2],
              "prune": { "steps": 2, "calibration": 2 },
              "eval": { "samples": 8, "steps": 2, "batch": 8, "bootstrap": 20 },
              "latency": { "batches": [1, 2], "warmup": 1, "runs": 2 }
            }
            """;
        string path = Path.Combine(folder, "tiny.json");
        File.WriteAllText(path, json);
        return (path, model.ParameterCount());
    }

    [Fact]
    public void A_layer_method_with_a_distillation_stage_measures_the_distilled_model()
    {
        using var temp = Fixtures.Temp();
        var (planPath, parameters) = TinyPlan(temp.Path);
        File.WriteAllText(planPath, File.ReadAllText(planPath)
            .Replace("\"methods\": [\"magnitude\", \"random\"]", "\"methods\": [\"laptop\"]", StringComparison.Ordinal)
            .Replace("\"targets\": [0.2]", "\"targets\": [0.1], \"distill\": { \"steps\": 2, \"batch\": 4 }", StringComparison.Ordinal)
            .Replace("\"latency\": { \"batches\": [1, 2], \"warmup\": 1, \"runs\": 2 }", "\"latency\": null, \"export\": { \"formats\": [\"safetensors\"] }", StringComparison.Ordinal));
        var plan = BatchPlan.Load(planPath);
        var log = new List<string>();
        var run = BatchRunner.Run(plan, new BatchRunOptions { Log = log.Add });
        Assert.Empty(run.Failed);
        var item = plan.Items()[1];
        var record = BatchRunner.ReadItem(plan.FolderOf(item))!;
        Assert.Equal("distilled", record["model_folder"]!.GetValue<string>());
        Assert.Equal(8, record["distill"]!["images"]!.GetValue<long>());
        Assert.NotEmpty(record["prune"]!["removed_layers"]!.AsArray());
        Assert.True(record["parameters"]!.GetValue<long>() < parameters); // the distilled model is the pruned one, retrained
        Assert.True(File.Exists(Path.Combine(plan.FolderOf(item), BatchRunner.DistilledFolderName, "eval_report.json")));
        Assert.Contains(log, l => l.Contains("distilling (normalized KD, 2 steps of 4 images) from the original", StringComparison.Ordinal));
        Assert.Contains("- **Distillation**: every pruned model is distilled", File.ReadAllText(Path.Combine(plan.Output, BatchSummary.MarkdownName)));
    }

    [Fact]
    public void Evaluations_sampled_in_onnx_runtime_give_torchsharps_figures_and_a_runtime_change_reruns_the_items()
    {
        using var temp = Fixtures.Temp();
        var (planPath, _) = TinyPlan(temp.Path);
        string torchJson = File.ReadAllText(planPath)
            .Replace("\"methods\": [\"magnitude\", \"random\"]", "\"methods\": [\"magnitude\"]", StringComparison.Ordinal)
            .Replace("\"latency\": { \"batches\": [1, 2], \"warmup\": 1, \"runs\": 2 }", "\"latency\": null", StringComparison.Ordinal);
        File.WriteAllText(planPath, torchJson);
        var torchPlan = BatchPlan.Load(planPath);
        Assert.Empty(BatchRunner.Run(torchPlan).Failed);
        var torchRecords = torchPlan.Items().Select(i => BatchRunner.ReadItem(torchPlan.FolderOf(i))!).ToList();

        File.WriteAllText(planPath, torchJson.Replace("\"bootstrap\": 20 }", "\"bootstrap\": 20, \"runtime\": \"onnx\" }", StringComparison.Ordinal));
        var onnxPlan = BatchPlan.Load(planPath);
        Assert.Equal("onnx", onnxPlan.Eval.Runtime);
        var log = new List<string>();
        var run = BatchRunner.Run(onnxPlan, new BatchRunOptions { Log = log.Add });
        Assert.Empty(run.Failed);
        Assert.Equal(2, run.Ran); // another runtime is another measurement: both items again
        for (int i = 0; i < 2; i++)
        {
            var record = BatchRunner.ReadItem(onnxPlan.FolderOf(onnxPlan.Items()[i]))!;
            Assert.Equal("onnx (CPU)", record["eval"]!["runtime"]!.GetValue<string>());
            Assert.StartsWith("torch", torchRecords[i]["eval"]!["runtime"]!.GetValue<string>());
            double torchFid = torchRecords[i]["eval"]!["fid_proxy"]!["value"]!.GetValue<double>(), onnxFid = record["eval"]!["fid_proxy"]!["value"]!.GetValue<double>();
            Assert.InRange(Math.Abs(onnxFid - torchFid) / torchFid, 0, 1e-4); // the same images within float error (an untrained model: FID-proxy in the 100,000s)
        }
        var pruned = BatchRunner.ReadItem(onnxPlan.FolderOf(onnxPlan.Items()[1]))!;
        Assert.Equal(torchRecords[1]["eval"]!["ssim_to_reference"]!.GetValue<double>(), pruned["eval"]!["ssim_to_reference"]!.GetValue<double>(), 1e-4);
        Assert.Equal(2, Directory.GetDirectories(Path.Combine(onnxPlan.Output, BatchRunner.OnnxCacheFolderName)).Length); // the original's bundle, exported once
        Assert.Contains("sampled in ONNX Runtime", File.ReadAllText(Path.Combine(onnxPlan.Output, BatchSummary.MarkdownName)));
        var refused = Assert.Throws<BatchPlanException>(() => BatchPlan.Parse(torchJson.Replace("\"bootstrap\": 20 }", "\"bootstrap\": 20, \"runtime\": \"tflite\" }", StringComparison.Ordinal), planPath));
        Assert.Contains("use torch or onnx", refused.Message);
    }

    [Fact]
    public void A_tiny_sweep_writes_items_and_summaries_then_resumes_without_redoing_finished_items()
    {
        using var temp = Fixtures.Temp();
        var (planPath, parameters) = TinyPlan(temp.Path);
        string output = temp.File("out");

        // 1. the whole sweep (in-process: the evaluations dominate, and a loaded machine must not hit the CLI helper's timeout)
        var plan = BatchPlan.Load(planPath);
        var log = new List<string>();
        var first = BatchRunner.Run(plan, new BatchRunOptions { Log = log.Add });
        Assert.Equal((3, 0), (first.Ran, first.Skipped));
        Assert.Empty(first.Failed);
        Assert.Contains(log, l => l.StartsWith("[1/3] tiny-unet original: evaluating", StringComparison.Ordinal));
        Assert.Contains(log, l => l.StartsWith("[3/3] tiny-unet random 20%: done in", StringComparison.Ordinal));
        Assert.Contains("3 item(s) run, 0 skipped as finished, 0 failed", log);

        var items = plan.Items();
        var records = items.ToDictionary(i => i.RelativeFolder, i => BatchRunner.ReadItem(plan.FolderOf(i))!);
        foreach (var item in items)
        {
            var record = records[item.RelativeFolder];
            Assert.NotNull(record);
            Assert.True(File.Exists(Path.Combine(plan.FolderOf(item), BatchRunner.BundleFolderName, "model.onnx")));
            Assert.Equal(2, record["latency"]!["onnxruntime-cpu"]!.AsArray().Count);
            Assert.Equal(2, record["latency"]!["torchsharp"]!.AsArray().Count);
            Assert.Equal(item.IsOriginal, record["eval"]!["ssim_to_reference"] is null);
        }
        Assert.True(records["tiny-unet/magnitude-0.2"]["achieved_removed_params"]!.GetValue<double>() >= 0.2);
        // the pruned bundle's model card carries the pruning and quality reports
        string card = File.ReadAllText(Path.Combine(output, "tiny-unet", "magnitude-0.2", "bundle", "README.md"));
        Assert.Contains("## Pruning", card);
        Assert.Contains("## Quality", card);

        // 2. the summaries: one row per item, the CSV's numbers are the item files'
        var csv = File.ReadAllLines(Path.Combine(output, BatchSummary.CsvName));
        Assert.Equal(4, csv.Length);
        var header = csv[0].Split(',');
        Assert.Equal(["model", "method", "target_removed_params", "achieved_removed_params", "parameters", "macs", "fid_proxy"], header[..7]);
        Assert.Contains("ort_ms_b1", header);
        Assert.Contains("speedup_b2", header);
        Assert.Contains("realised_over_theoretical_b2", header);
        Assert.Contains("torch_ms_b2", header);
        string Cell(string[] row, string column) => row[Array.IndexOf(header, column)];
        var rows = csv[1..].Select(l => l.Split(',')).ToArray();
        Assert.Equal(["original", "magnitude", "random"], rows.Select(r => r[1]));
        foreach (var (row, item) in rows.Zip(items))
        {
            var record = records[item.RelativeFolder];
            Assert.Equal(record["parameters"]!.GetValue<long>().ToString(CultureInfo.InvariantCulture), Cell(row, "parameters"));
            Assert.Equal(record["eval"]!["fid_proxy"]!["value"]!.GetValue<double>(), double.Parse(Cell(row, "fid_proxy"), CultureInfo.InvariantCulture), 5);
            Assert.True(double.Parse(Cell(row, "ort_ms_b2"), CultureInfo.InvariantCulture) > 0);
        }
        Assert.Equal("1", Cell(rows[0], "speedup_b1"));
        Assert.Equal("", Cell(rows[0], "ssim_to_original"));
        Assert.True(double.Parse(Cell(rows[1], "mac_reduction"), CultureInfo.InvariantCulture) > 0);

        string markdown = File.ReadAllText(Path.Combine(output, BatchSummary.MarkdownName));
        Assert.Contains("3 of 3 items finished", markdown);
        Assert.Contains("| model | method | target | removed params | params | MACs | FID-proxy [95%] | KID | SSIM to original | ORT ms b1 | ORT ms b2 |", markdown);
        Assert.Contains($"| tiny-unet | original | — | 0.0% | {parameters.ToString("N0", CultureInfo.InvariantCulture)} |", markdown);
        Assert.Contains("| tiny-unet | magnitude | 20% |", markdown);
        Assert.Contains("| tiny-unet | random | 20% |", markdown);
        Assert.Contains("![FID-proxy against latency and parameters, Pareto fronts](pareto.png)", markdown);

        var png = File.ReadAllBytes(Path.Combine(output, BatchSummary.ParetoName));
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
        Assert.Equal(1500, System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)));

        // 3. a re-run through the real executable skips every finished item: no item file is rewritten, the summary is
        string MarkerOf(int i) => Path.Combine(plan.FolderOf(items[i]), BatchRunner.ItemFileName);
        var written = Enumerable.Range(0, 3).Select(i => File.GetLastWriteTimeUtc(MarkerOf(i))).ToArray();
        var (code, stdout, stderr) = CliTests.Dprune("batch", planPath);
        Assert.True(code == 0, stdout + stderr);
        Assert.Equal(3, stdout.Split('\n').Count(l => l.TrimEnd().EndsWith(": finished earlier, skipped", StringComparison.Ordinal)));
        Assert.Contains("[2/3] tiny-unet magnitude 20%: finished earlier, skipped", stdout);
        Assert.Contains("0 item(s) run, 3 skipped as finished, 0 failed", stdout);
        Assert.Equal(written, Enumerable.Range(0, 3).Select(i => File.GetLastWriteTimeUtc(MarkerOf(i))));
        Assert.Equal(csv, File.ReadAllLines(Path.Combine(output, BatchSummary.CsvName)));

        // 4. a deleted marker (as after a crash mid-item) makes only that item run again
        File.Delete(MarkerOf(1));
        Assert.Equal(BatchRunner.ItemState.Unfinished, BatchRunner.Inspect(plan, items[1]));
        log.Clear();
        var resumed = BatchRunner.Run(plan, new BatchRunOptions { Log = log.Add });
        Assert.Equal((1, 2), (resumed.Ran, resumed.Skipped));
        Assert.Empty(resumed.Failed);
        Assert.Contains("[2/3] tiny-unet magnitude 20%: an earlier run stopped part-way; starting it over", log);
        Assert.True(File.Exists(MarkerOf(1)));
        Assert.Equal(written[0], File.GetLastWriteTimeUtc(MarkerOf(0)));
        Assert.Equal(written[2], File.GetLastWriteTimeUtc(MarkerOf(2)));
        Assert.Equal(3, resumed.Summary!.Rows.Count);

        // 5. a finished item recorded with other settings is stale, and would be run again
        var record2 = JsonNode.Parse(File.ReadAllText(MarkerOf(2)))!;
        record2["settings"]!["eval"]!["samples"] = 17;
        File.WriteAllText(MarkerOf(2), record2.ToJsonString());
        Assert.Equal(BatchRunner.ItemState.Stale, BatchRunner.Inspect(plan, items[2]));
        Assert.Equal(BatchRunner.ItemState.Finished, BatchRunner.Inspect(plan, items[0]));
    }
}
