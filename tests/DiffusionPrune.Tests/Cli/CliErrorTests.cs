using DiffusionPrune.Cli.Commands;
using DiffusionPrune.Tests.Runtime;

namespace DiffusionPrune.Tests.Cli;

/// <summary>Errors: a user's mistake is one line and exit 2; our own bug is one line naming a log with the trace, exit 1.</summary>
[Collection(OneDnnSwitchCollection.Name)] // swaps the process-wide Console.Error: runs alone
public class CliErrorTests
{
    private static (int Code, string Stderr) Capture(Func<int> body, bool verbose = false)
    {
        var original = Console.Error;
        var writer = new StringWriter();
        Console.SetError(writer);
        CliCommon.Verbose = verbose;
        try
        {
            return (CliCommon.Run(body), writer.ToString());
        }
        finally
        {
            CliCommon.Verbose = false;
            Console.SetError(original);
        }
    }

    private static int Throw(Exception e) => throw e;

    [Fact]
    public void A_user_error_is_one_line_with_exit_code_2()
    {
        var (code, stderr) = Capture(() => Throw(new FileNotFoundException("No model at 'x'.")));
        Assert.Equal(2, code);
        Assert.Equal("error: No model at 'x'." + Environment.NewLine, stderr);
    }

    [Fact]
    public void An_internal_error_is_one_line_naming_a_log_that_holds_the_trace()
    {
        var (code, stderr) = Capture(() => Throw(new InvalidOperationException("boom\nsecond line")));
        Assert.Equal(1, code);
        var lines = stderr.Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries);
        string line = Assert.Single(lines);
        Assert.StartsWith("error: unexpected failure (InvalidOperationException: boom); the full trace is in ", line);
        Assert.DoesNotContain("   at ", stderr); // no stack trace on stderr by default
        string log = line[(line.IndexOf(" is in ", StringComparison.Ordinal) + 7)..line.IndexOf(". Please report", StringComparison.Ordinal)];
        try
        {
            string trace = File.ReadAllText(log);
            Assert.Contains("System.InvalidOperationException: boom", trace);
            Assert.Contains("   at ", trace);
        }
        finally
        {
            File.Delete(log);
        }
    }

    [Fact]
    public void Verbose_prints_the_trace_on_stderr_as_well()
    {
        var (code, stderr) = Capture(() => Throw(new InvalidOperationException("boom")), verbose: true);
        Assert.Equal(1, code);
        Assert.Contains("   at ", stderr);
        var first = stderr.Split(Environment.NewLine)[0];
        string log = first[(first.IndexOf(" is in ", StringComparison.Ordinal) + 7)..first.IndexOf(". Please report", StringComparison.Ordinal)];
        File.Delete(log);
    }
}
