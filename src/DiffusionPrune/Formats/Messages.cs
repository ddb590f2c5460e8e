// BCL-only: samples/OnDeviceDemo compiles this file.
namespace DiffusionPrune.Formats;

/// <summary>Keeps user-facing error messages to one line whatever they quote.</summary>
public static class Messages
{
    /// <summary>
    /// <paramref name="message"/> with every run of line breaks (and the spaces around them) replaced by one space:
    /// System.Text.Json quotes the offending text of a file, line breaks included.
    /// </summary>
    public static string OneLine(string message)
    {
        var parts = message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return string.Join(' ', parts);
    }

    /// <summary>An <see cref="InvalidDataException"/> whose message is <see cref="OneLine"/>.</summary>
    public static InvalidDataException InvalidData(string message, Exception? inner = null) => new(OneLine(message), inner);
}
