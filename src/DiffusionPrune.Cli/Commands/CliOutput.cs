using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization;
using DiffusionPrune.Pipeline;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace DiffusionPrune.Cli.Commands;

/// <summary>
/// What a long command prints, for people and for logs alike:
/// <list type="bullet">
/// <item>progress is drawn by Spectre.Console in a terminal (a bar per stage, with its figures and the time left); when
/// stdout or stderr is not a terminal (a pipe, a CI log) it prints one line at the start, at every 10 %, and at the end
/// instead, with no escape codes;</item>
/// <item>tables of results are Spectre.Console tables, plain text (no borders, no colours) when redirected;</item>
/// <item><c>--quiet</c> prints nothing but errors;</item>
/// <item><c>--json</c> prints one machine-readable summary on stdout at the end, and the human lines on stderr.</item>
/// </list>
/// Progress and notes go to stderr; results go to stdout (to stderr under <c>--json</c>, whose stdout is the JSON).
/// </summary>
public sealed class CliOutput
{
    /// <summary>A progress line is printed (when not redrawing) each time the fraction crosses a multiple of this.</summary>
    public const double LogStep = 0.10;

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    private readonly TextWriter _out;
    private readonly TextWriter _err;
    private readonly object _lock = new();
    private bool _lineOpen;
    private int _lastBucket = -1;
    private string? _lastLabel;
    private IAnsiConsole? _live; // the Spectre console drawing progress now: lines go through it, above the bars

    public CliOutput(bool quiet, bool json, bool? redraw = null, TextWriter? stdout = null, TextWriter? stderr = null)
    {
        Quiet = quiet;
        Json = json;
        Redraw = redraw ?? (!Console.IsOutputRedirected && !Console.IsErrorRedirected);
        _out = stdout ?? Console.Out;
        _err = stderr ?? Console.Error;
    }

    public bool Quiet { get; }
    public bool Json { get; }

    /// <summary>Redraw progress in place (a terminal) rather than print log lines.</summary>
    public bool Redraw { get; }

    public static Option<bool> QuietOption() => new("--quiet", "-q") { Description = "Print nothing but errors (no progress, no summary)." };

    public static Option<bool> JsonOption() => new("--json")
    {
        Description = "Print one machine-readable JSON summary on stdout when done; progress and messages go to stderr.",
    };

    /// <summary>Builds the output for a command from its parsed --quiet and --json.</summary>
    public static CliOutput From(ParseResult parse, Option<bool> quiet, Option<bool> json) => new(parse.GetValue(quiet), parse.GetValue(json));

    /// <summary>
    /// Reports progress of one phase: <paramref name="label"/> names the phase (a new label starts a new line),
    /// <paramref name="done"/> of <paramref name="total"/>, and <paramref name="detail"/> the figures of the moment.
    /// </summary>
    public void Progress(string label, long done, long total, string detail = "")
    {
        if (Quiet) return;
        lock (_lock)
        {
            string text = $"{label} {done}/{total}{(detail.Length > 0 ? " " + detail : "")}";
            if (Redraw)
            {
                _err.Write($"\r{text}   ");
                _lineOpen = true;
                _lastLabel = label;
                return;
            }
            if (label != _lastLabel) (_lastLabel, _lastBucket) = (label, -1); // a new phase: its first step is shown
            double fraction = total <= 0 ? 1 : Math.Clamp((double)done / total, 0, 1);
            int bucket = (int)Math.Floor(fraction / LogStep + 1e-9);
            if (bucket == _lastBucket) return;
            _lastBucket = bucket;
            _err.WriteLine(text);
        }
    }

    /// <summary>
    /// The pipeline's progress as this output prints it: a stage's counted steps as a progress line labelled
    /// <paramref name="label"/> (its message as the detail when <paramref name="detail"/>), notes as notes. A stage's
    /// closing line and its preview pictures are left to the command, which prints its own results.
    /// </summary>
    /// <param name="notes">Print the stages' notes (a batch, which logs its own lines per item, leaves them out).</param>
    public IProgress<Pipeline.StageProgress> Stages(Func<Pipeline.PipelineStage, string> label, bool detail = false, bool notes = true) =>
        new Pipeline.SynchronousProgress<Pipeline.StageProgress>(p =>
        {
            if (p.Fraction is null)
            {
                if (notes) Note(p.Message);
            }
            else if (p.Done is long done && p.Total is long total) Progress(label(p.Stage), done, total, detail ? p.Message : "");
        });

    /// <summary>
    /// Runs a pipeline stage and shows its progress: Spectre.Console bars in a terminal, the line log of
    /// <see cref="Stages"/> when redirected, nothing under --quiet. Returns the stage's result.
    /// </summary>
    public T Track<T>(Func<IProgress<StageProgress>, Task<T>> stage, Func<PipelineStage, string> label, bool detail = false, bool notes = true)
    {
        if (Quiet || !Redraw) return stage(Stages(label, detail, notes)).GetAwaiter().GetResult();
        var console = SpectreOn(_err, interactive: true);
        _live = console;
        try
        {
            return TrackLive(console, stage, label, detail, notes);
        }
        finally
        {
            _live = null;
        }
    }

    private static T TrackLive<T>(IAnsiConsole console, Func<IProgress<StageProgress>, Task<T>> stage, Func<PipelineStage, string> label, bool detail, bool notes)
    {
        return console.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .StartAsync(async context =>
            {
                var tasks = new Dictionary<string, ProgressTask>(StringComparer.Ordinal);
                var progress = new SynchronousProgress<StageProgress>(p =>
                {
                    if (p.Fraction is null)
                    {
                        if (notes) console.MarkupLine(Markup.Escape(p.Message));
                        return;
                    }
                    if (p.Done is not long done || p.Total is not long total) return;
                    string name = label(p.Stage);
                    if (!tasks.TryGetValue(name, out var task)) tasks[name] = task = context.AddTask(Markup.Escape(name), maxValue: Math.Max(1, total));
                    task.MaxValue = Math.Max(1, total);
                    task.Value = done;
                    string text = detail && p.Message.Length > 0 ? $"{name} {done}/{total} {p.Message}" : $"{name} {done}/{total}";
                    int room = Math.Max(20, console.Profile.Width - 48); // the bar, percentage, time left and spinner take the rest
                    task.Description = Markup.Escape(text.Length > room ? text[..(room - 1)] + "…" : text);
                });
                return await stage(progress).ConfigureAwait(false);
            }).GetAwaiter().GetResult();
    }

    /// <summary>
    /// A table of results (header row first): on stdout, or stderr under --json; Spectre.Console draws it, as plain
    /// aligned text without borders or colours when the output is redirected.
    /// </summary>
    /// <param name="alignRight">Right-align every column but the first (figures); false leaves all left-aligned (text).</param>
    public void Table(IReadOnlyList<string> header, IEnumerable<IReadOnlyList<string>> rows, bool showHeader = true, bool alignRight = true)
    {
        if (Quiet) return;
        var table = new Table().Border(Redraw ? TableBorder.Rounded : TableBorder.None);
        if (!showHeader) table.HideHeaders();
        for (int i = 0; i < header.Count; i++)
            table.AddColumn(new TableColumn(Markup.Escape(header[i])) { Alignment = i > 0 && alignRight ? Justify.Right : Justify.Left, NoWrap = i > 0 });
        foreach (var row in rows) table.AddRow(row.Select(cell => (IRenderable)new Text(cell)).ToArray());
        lock (_lock)
        {
            EndLine();
            SpectreOn(Json ? _err : _out, interactive: Redraw).Write(table);
        }
    }

    /// <summary>Two columns, name and value, without a header: a result summary.</summary>
    public void Pairs(IEnumerable<(string Name, string Value)> pairs) =>
        Table(["", ""], pairs.Select(p => (IReadOnlyList<string>)[p.Name, p.Value]), showHeader: false, alignRight: false);

    private static IAnsiConsole SpectreOn(TextWriter writer, bool interactive)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = interactive ? InteractionSupport.Yes : InteractionSupport.No,
        });
        if (!interactive) console.Profile.Width = 240; // a log has no width: never wrap a path
        return console;
    }

    /// <summary>A note for people (stderr), ending any progress line first.</summary>
    public void Note(string line)
    {
        if (Quiet) return;
        lock (_lock)
        {
            if (_live is { } live)
            {
                live.WriteLine(line);
                return;
            }
            EndLine();
            _err.WriteLine(line);
        }
    }

    /// <summary>A result line: stdout normally, stderr under --json (whose stdout is the summary), nothing under --quiet.</summary>
    public void Result(string line)
    {
        if (Quiet) return;
        lock (_lock)
        {
            if (_live is { } live)
            {
                live.WriteLine(line);
                return;
            }
            EndLine();
            (Json ? _err : _out).WriteLine(line);
        }
    }

    /// <summary>Under --json, writes the summary object on stdout (also under --quiet: it was asked for).</summary>
    public void Summary(object summary)
    {
        lock (_lock)
        {
            if (!Quiet) EndLine();
            if (!Json) return;
            _out.WriteLine(summary is System.Text.Json.Nodes.JsonObject report
                ? Formats.ReportJson.ToText(report) // null and a note for a non-finite figure, never an exception
                : JsonSerializer.Serialize(summary, summary.GetType(), JsonOptions));
        }
    }

    /// <summary>Ends a redrawn progress line, so what follows starts on its own line.</summary>
    public void EndProgress()
    {
        lock (_lock) EndLine();
    }

    private void EndLine()
    {
        if (!_lineOpen) return;
        _err.WriteLine();
        _lineOpen = false;
    }
}
