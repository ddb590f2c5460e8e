using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace DiffusionPrune.Cli.Commands;

/// <summary>
/// What a long command prints, for people and for logs alike:
/// <list type="bullet">
/// <item>progress redraws one line in a terminal; when stdout or stderr is not a terminal (a pipe, a CI log) it prints
/// one line at the start, at every 10 %, and at the end instead of carriage-return redraws;</item>
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

    /// <summary>A note for people (stderr), ending any progress line first.</summary>
    public void Note(string line)
    {
        if (Quiet) return;
        lock (_lock)
        {
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
