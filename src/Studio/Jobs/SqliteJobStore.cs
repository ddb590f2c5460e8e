using System.Globalization;
using System.Text.Json;
using DiffusionPrune.Pipeline;
using Microsoft.Data.Sqlite;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>A job as stored: its last snapshot and the request it can be run again from (null for jobs that cannot).</summary>
public sealed record StoredJob(JobSnapshot Snapshot, string? Request);

/// <summary>Where <see cref="JobStateService"/> keeps jobs across restarts.</summary>
public interface IJobStore
{
    /// <summary>Every stored job.</summary>
    IReadOnlyList<StoredJob> LoadAll();

    /// <summary>Writes the job's snapshot; <paramref name="request"/> null keeps the request stored before.</summary>
    void Save(JobSnapshot snapshot, string? request = null);
}

/// <summary>
/// Jobs in one SQLite file (Microsoft.Data.Sqlite) under the Studio's data folder: status, progress, message, times,
/// error, result, output, log, figures, the last preview and the request, so a restart loses no finished result and can
/// resume what it cut off. A connection per call (pooled), WAL journal, so the queue's thread and the pages never share one.
/// </summary>
public sealed class SqliteJobStore : IJobStore
{
    private readonly string _connection;

    // Figures may be NaN or infinite (peak RSS where it cannot be read, a diverged loss): stored as "NaN", not refused.
    private static readonly JsonSerializerOptions Figures = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    /// <summary>Opens (creating when needed) the store at <paramref name="path"/>.</summary>
    public SqliteJobStore(string path)
    {
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!);
        _connection = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadWriteCreate, Pooling = true }.ToString();
        using var db = Open();
        Execute(db, "PRAGMA journal_mode=WAL;");
        Execute(db, """
            CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, progress REAL NOT NULL,
                message TEXT NOT NULL, enqueued_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, error TEXT, result TEXT,
                output_path TEXT, log TEXT, history TEXT, preview BLOB, preview_width INTEGER, preview_height INTEGER,
                preview_caption TEXT, request TEXT);
            """);
        Path = path;
    }

    /// <summary>The database file.</summary>
    public string Path { get; }

    /// <inheritdoc />
    public IReadOnlyList<StoredJob> LoadAll()
    {
        using var db = Open();
        using var command = db.CreateCommand();
        command.CommandText = "SELECT id, kind, name, status, progress, message, enqueued_at, started_at, finished_at, error, result, output_path, " +
                              "log, history, preview, preview_width, preview_height, preview_caption, request FROM jobs ORDER BY enqueued_at";
        using var reader = command.ExecuteReader();
        var jobs = new List<StoredJob>();
        while (reader.Read())
        {
            string? Text(int i) => reader.IsDBNull(i) ? null : reader.GetString(i);
            DateTimeOffset? Time(int i) => Text(i) is { } t ? DateTimeOffset.Parse(t, CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind) : null;
            var preview = reader.IsDBNull(14) ? null
                : new PreviewImage((byte[])reader[14], reader.GetInt32(15), reader.GetInt32(16), Text(17) ?? "");
            var snapshot = new JobSnapshot(
                Guid.Parse(reader.GetString(0)), reader.GetString(2), Enum.Parse<JobStatus>(reader.GetString(3)), reader.GetDouble(4), reader.GetString(5),
                Time(6)!.Value, Time(7), Time(8), Text(9),
                Text(13) is { } history ? JsonSerializer.Deserialize<List<JobMetrics>>(history, Figures) : null,
                preview,
                Text(12) is { } log ? JsonSerializer.Deserialize<List<string>>(log, Figures) : null,
                Text(10), reader.GetString(1), Text(11));
            jobs.Add(new StoredJob(snapshot, Text(18)));
        }
        return jobs;
    }

    /// <inheritdoc />
    public void Save(JobSnapshot job, string? request = null)
    {
        using var db = Open();
        using var command = db.CreateCommand();
        command.CommandText = """
            INSERT INTO jobs (id, kind, name, status, progress, message, enqueued_at, started_at, finished_at, error, result, output_path,
                              log, history, preview, preview_width, preview_height, preview_caption, request)
            VALUES ($id, $kind, $name, $status, $progress, $message, $enqueued, $started, $finished, $error, $result, $output,
                    $log, $history, $preview, $pw, $ph, $pc, $request)
            ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, name = excluded.name, status = excluded.status, progress = excluded.progress,
                message = excluded.message, started_at = excluded.started_at, finished_at = excluded.finished_at, error = excluded.error,
                result = excluded.result, output_path = excluded.output_path, log = excluded.log, history = excluded.history,
                preview = excluded.preview, preview_width = excluded.preview_width, preview_height = excluded.preview_height,
                preview_caption = excluded.preview_caption, request = COALESCE(excluded.request, jobs.request);
            """;
        object Db(object? value) => value ?? DBNull.Value;
        string? Time(DateTimeOffset? t) => t?.ToString("O", CultureInfo.InvariantCulture);
        command.Parameters.AddWithValue("$id", job.Id.ToString());
        command.Parameters.AddWithValue("$kind", job.Kind);
        command.Parameters.AddWithValue("$name", job.Name);
        command.Parameters.AddWithValue("$status", job.Status.ToString());
        command.Parameters.AddWithValue("$progress", job.Progress);
        command.Parameters.AddWithValue("$message", job.Message);
        command.Parameters.AddWithValue("$enqueued", Time(job.EnqueuedAt)!);
        command.Parameters.AddWithValue("$started", Db(Time(job.StartedAt)));
        command.Parameters.AddWithValue("$finished", Db(Time(job.FinishedAt)));
        command.Parameters.AddWithValue("$error", Db(job.Error));
        command.Parameters.AddWithValue("$result", Db(job.Result));
        command.Parameters.AddWithValue("$output", Db(job.OutputPath));
        command.Parameters.AddWithValue("$log", job.Log is null ? DBNull.Value : JsonSerializer.Serialize(job.Log, Figures));
        command.Parameters.AddWithValue("$history", job.History is null ? DBNull.Value : JsonSerializer.Serialize(job.History, Figures));
        command.Parameters.AddWithValue("$preview", Db(job.Preview?.Png));
        command.Parameters.AddWithValue("$pw", Db(job.Preview?.Width));
        command.Parameters.AddWithValue("$ph", Db(job.Preview?.Height));
        command.Parameters.AddWithValue("$pc", Db(job.Preview?.Caption));
        command.Parameters.AddWithValue("$request", Db(request));
        command.ExecuteNonQuery();
    }

    private SqliteConnection Open()
    {
        var db = new SqliteConnection(_connection);
        db.Open();
        return db;
    }

    private static void Execute(SqliteConnection db, string sql)
    {
        using var command = db.CreateCommand();
        command.CommandText = sql;
        command.ExecuteNonQuery();
    }
}
