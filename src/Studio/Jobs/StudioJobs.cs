using System.Text.Json;
using DiffusionPrune.Pruning;
using DiffusionPrune.Training;

namespace DiffusionPrune.Studio.Jobs;

/// <summary>Rebuilds an interrupted job from its stored request, continuing from the core's checkpoint where there is one.</summary>
public static class StudioJobs
{
    /// <summary>
    /// The job of <paramref name="kind"/> stored as <paramref name="requestJson"/>, under the same <paramref name="id"/>.
    /// An EcoDiff prune continues from its last checkpoint (every 10 iterations) and a distillation from its last
    /// checkpoint when one was written; a batch runs its plan again, skipping the items it finished; other jobs, and runs
    /// cut off before their first checkpoint, start again.
    /// </summary>
    /// <exception cref="ArgumentException">The kind cannot be resumed or the request is unreadable.</exception>
    public static StudioJob Resume(string kind, string requestJson, Guid id)
    {
        try
        {
            switch (kind)
            {
                case "prune":
                    {
                        var stored = JsonSerializer.Deserialize<PruneJob.StoredPrune>(requestJson) ?? throw new JsonException("null");
                        var request = stored.Request;
                        bool checkpoint = request.OutputPath is { } output && request.Method == "ecodiff"
                            && EcoDiffCheckpoint.Exists(EcoDiffCheckpoint.FolderFor(output));
                        return new PruneJob(request with { Resume = checkpoint }, stored.Evaluate ? new QuickEvaluation(OnnxCache: stored.OnnxCache) : null) { Id = id };
                    }
                case "distill":
                    {
                        var stored = JsonSerializer.Deserialize<DistillJob.StoredDistill>(requestJson) ?? throw new JsonException("null");
                        var request = stored.Request;
                        bool checkpoint = File.Exists(Path.Combine(request.OutputPath, DiffusionTrainer.CheckpointFolder, "state.json"));
                        return new DistillJob(request with { Resume = checkpoint }, stored.Evaluate ? new QuickEvaluation(OnnxCache: stored.OnnxCache) : null) { Id = id };
                    }
                case "export":
                    {
                        var request = JsonSerializer.Deserialize<DiffusionPrune.Export.ExportRequest>(requestJson) ?? throw new JsonException("null");
                        return new ExportJob(request) { Id = id };
                    }
                case "evaluate":
                    {
                        var stored = JsonSerializer.Deserialize<EvaluateJob.StoredEvaluate>(requestJson) ?? throw new JsonException("null");
                        if (stored.Pipeline is { } sd) return new PipelineEvaluateJob(sd.Request, stored.ReportPath, sd.ModelName, sd.ReferenceName) { Id = id };
                        return new EvaluateJob(stored.Request ?? throw new JsonException("no request"), stored.ReportPath, stored.OnnxCache) { Id = id };
                    }
                case "sample":
                    {
                        var stored = JsonSerializer.Deserialize<SampleJob.StoredSample>(requestJson) ?? throw new JsonException("null");
                        return new SampleJob(stored.Request, stored.OnnxCache) { Id = id };
                    }
                case "compare":
                    {
                        // nothing to continue from: the comparison runs again into the same folder
                        var request = JsonSerializer.Deserialize<Evaluation.CompareRequest>(requestJson) ?? throw new JsonException("null");
                        return new CompareJob(request) { Id = id };
                    }
                case "compare-pipelines":
                    {
                        var request = JsonSerializer.Deserialize<PipelineCompareRequest>(requestJson) ?? throw new JsonException("null");
                        return new PipelineCompareJob(request) { Id = id };
                    }
                case "batch":
                    {
                        // the plan is in the batch's folder; run again, finished items are skipped and the rest done
                        var stored = JsonSerializer.Deserialize<BatchJob.StoredBatch>(requestJson) ?? throw new JsonException("null");
                        return new BatchJob(stored.PlanPath, stored.Title) { Id = id };
                    }
                default:
                    throw new ArgumentException($"A {kind} job cannot be resumed; start it again.");
            }
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"The stored request of job {id} is unreadable ({e.Message}); start the job again.");
        }
    }
}
