using System.Text.Json.Nodes;
using DiffusionPrune.Cli.Commands;

namespace DiffusionPrune.Tests.Cli;

/// <summary>What long commands print: redraws in a terminal, whole lines in logs, nothing under --quiet, JSON under --json.</summary>
public class CliOutputTests
{
    private static (CliOutput Output, StringWriter Out, StringWriter Err) Make(bool quiet = false, bool json = false, bool redraw = false)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        return (new CliOutput(quiet, json, redraw, stdout, stderr), stdout, stderr);
    }

    [Fact]
    public void In_a_log_progress_prints_the_first_step_each_tenth_and_the_last_as_whole_lines()
    {
        var (output, _, err) = Make();
        for (int i = 1; i <= 100; i++) output.Progress("iteration", i, 100, $"loss {i}");
        var lines = err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(["iteration 1/100 loss 1", "iteration 10/100 loss 10", "iteration 20/100 loss 20", "iteration 30/100 loss 30",
            "iteration 40/100 loss 40", "iteration 50/100 loss 50", "iteration 60/100 loss 60", "iteration 70/100 loss 70",
            "iteration 80/100 loss 80", "iteration 90/100 loss 90", "iteration 100/100 loss 100"], lines);
        Assert.DoesNotContain('\r', err.ToString());
    }

    [Fact]
    public void Short_runs_log_every_step_and_a_new_phase_starts_afresh()
    {
        var (output, _, err) = Make();
        for (int i = 1; i <= 3; i++) output.Progress("iteration", i, 3);
        for (int i = 1; i <= 2; i++) output.Progress("sampled", i * 8, 16);
        Assert.Equal(["iteration 1/3", "iteration 2/3", "iteration 3/3", "sampled 8/16", "sampled 16/16"],
            err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void In_a_terminal_progress_redraws_one_line_and_results_start_on_a_new_one()
    {
        var (output, stdout, err) = Make(redraw: true);
        output.Progress("step", 1, 2);
        output.Progress("step", 2, 2);
        output.Result("done");
        Assert.Equal("\rstep 1/2   \rstep 2/2   \n", err.ToString().Replace("\r\n", "\n"));
        Assert.Equal("done" + Environment.NewLine, stdout.ToString());
    }

    [Fact]
    public void Quiet_prints_nothing_and_json_prints_only_the_summary_on_stdout()
    {
        var (quiet, qOut, qErr) = Make(quiet: true);
        quiet.Progress("step", 1, 1);
        quiet.Note("note");
        quiet.Result("result");
        quiet.Summary(new { Steps = 1 });
        Assert.Equal("", qOut.ToString() + qErr.ToString());

        var (json, jOut, jErr) = Make(json: true);
        json.Progress("step", 1, 1);
        json.Result("result");
        json.Summary(new { FinalLoss = 0.25, OutputPath = "/x" });
        var summary = JsonNode.Parse(jOut.ToString())!.AsObject();
        Assert.Equal(0.25, summary["final_loss"]!.GetValue<double>());
        Assert.Equal("/x", summary["output_path"]!.GetValue<string>());
        Assert.Contains("result", jErr.ToString());
        Assert.Contains("step 1/1", jErr.ToString());
    }

    [Fact]
    public void Quiet_with_json_still_prints_the_summary_it_was_asked_for()
    {
        var (output, stdout, stderr) = Make(quiet: true, json: true);
        output.Result("result");
        output.Summary(new JsonObject { ["method"] = "magnitude" });
        Assert.Equal("magnitude", JsonNode.Parse(stdout.ToString())!["method"]!.GetValue<string>());
        Assert.Equal("", stderr.ToString());
    }

    private static async Task<int> ThreeIterations(IProgress<DiffusionPrune.Pipeline.StageProgress> progress)
    {
        await Task.Yield();
        progress.Report(DiffusionPrune.Pipeline.StageProgress.Note(DiffusionPrune.Pipeline.PipelineStage.Prune, "scoring 12 unit groups"));
        for (int i = 1; i <= 3; i++)
            progress.Report(DiffusionPrune.Pipeline.StageProgress.Step(DiffusionPrune.Pipeline.PipelineStage.Prune, i, 3, $"loss 0.{i}"));
        return 42;
    }

    [Fact]
    public void A_tracked_stage_in_a_log_prints_whole_lines_and_returns_the_stage_result()
    {
        var (output, _, err) = Make();
        Assert.Equal(42, output.Track(ThreeIterations, _ => "iteration", detail: true));
        Assert.Equal(["scoring 12 unit groups", "iteration 1/3 loss 0.1", "iteration 2/3 loss 0.2", "iteration 3/3 loss 0.3"],
            err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void A_tracked_stage_in_a_terminal_is_drawn_by_spectre_with_notes_above_the_bar()
    {
        var (output, stdout, err) = Make(redraw: true);
        Assert.Equal(42, output.Track(ThreeIterations, _ => "iteration", detail: true));
        string drawn = err.ToString();
        Assert.Contains("scoring 12 unit groups", drawn);
        Assert.Contains("iteration 3/3 loss 0.3", drawn);
        Assert.Contains("100%", drawn);
        Assert.Equal("", stdout.ToString());
    }

    [Fact]
    public void Tables_in_a_log_are_plain_aligned_text_and_go_to_stderr_under_json()
    {
        var (output, stdout, _) = Make();
        output.Pairs([("runtime", "onnx (CPU)"), ("FID-proxy", "12.345  [10.000, 14.000]"), ("model", new string('m', 150))]);
        string text = stdout.ToString();
        Assert.Matches(@"runtime\s+onnx \(CPU\)", text);
        Assert.Contains(new string('m', 150), text); // a long value is never wrapped or cut in a log
        Assert.True(!text.Contains('\u001b'), text.Replace("\u001b", "<ESC>")); // no escape codes
        Assert.DoesNotContain("─", text); // no borders
        int column = text.Split('\n')[0].IndexOf("onnx", StringComparison.Ordinal);
        Assert.Equal(column, text.Split('\n')[1].IndexOf("12.345", StringComparison.Ordinal)); // values aligned

        var (json, jsonOut, jsonErr) = Make(json: true);
        json.Table(["block", "parameters"], [["down.0", "1,024"]]);
        Assert.Equal("", jsonOut.ToString());
        Assert.Contains("down.0", jsonErr.ToString());

        var (quiet, quietOut, quietErr) = Make(quiet: true);
        quiet.Pairs([("a", "b")]);
        Assert.Equal("", quietOut.ToString() + quietErr.ToString());
    }
}
