using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Evaluation;
using DiffusionPrune.Export;
using DiffusionPrune.Batch;
using DiffusionPrune.Families;
using DiffusionPrune.Pipeline.StableDiffusion;
using DiffusionPrune.Pruning;
using DiffusionPrune.Pruning.Importance;
using DiffusionPrune.Pruning.Layers;
using DiffusionPrune.Studio.Batch;
using DiffusionPrune.Studio.Catalog;
using DiffusionPrune.Studio.Compare;
using DiffusionPrune.Studio.Hosting;
using DiffusionPrune.Studio.Jobs;
using DiffusionPrune.Training;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Options;

namespace DiffusionPrune.Studio.Api;

/// <summary>
/// The Studio's JSON API, for automation and tests (README, "JSON API"): models, uploads and jobs. Bad input gets a 400
/// problem detail naming the field, an unknown id a 404; bodies are size-limited; no endpoint runs anything but the
/// core's own jobs, and no response carries a stack trace.
/// </summary>
public static class StudioApi
{
    /// <summary>Maps <c>/api/models</c>, <c>/api/models/{name}</c> (PUT a zip), <c>/api/jobs</c> and <c>/api/jobs/{id}</c>.</summary>
    public static IEndpointRouteBuilder MapStudioApi(this IEndpointRouteBuilder app)
    {
        var api = app.MapGroup("/api");
        api.AddEndpointFilter(SameOriginWrites);
        api.MapGet("/models", ListModelsAsync);
        api.MapPut("/models/{name}", UploadAsync);
        api.MapPost("/models", AddByPathAsync);
        api.MapPost("/jobs", CreateJobAsync);
        api.MapGet("/jobs/{id}", GetJob);
        api.MapDelete("/jobs/{id}", CancelJob);
        api.MapPost("/jobs/{id}/resume", ResumeJobAsync);
        api.MapGet("/samples/{file}", SampleImage);
        api.MapGet("/exports", ListBundles);
        api.MapGet("/exports/{file}", BundleZip);
        api.MapGet("/exports/{name}/{file}", BundleFile);
        api.MapGet("/exports/{name}/{component}/{file}", BundleComponentFile);
        api.MapPost("/exports/{name}/tokenize", TokenizeAsync);
        api.MapGet("/comparisons", ListComparisons);
        api.MapGet("/comparisons/{name}/{file}", ComparisonFile);
        api.MapGet("/batches", ListBatches);
        api.MapGet("/batches/{name}/{file}", BatchFile);
        return app;
    }

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = false };

    /// <summary>
    /// Refuses a write (anything but GET/HEAD) that a browser sent from another site's page: its Origin header names
    /// another host than the one serving the Studio. Scripts and curl send no Origin and are not affected.
    /// </summary>
    private static async ValueTask<object?> SameOriginWrites(EndpointFilterInvocationContext invocation, EndpointFilterDelegate next)
    {
        var request = invocation.HttpContext.Request;
        if (!HttpMethods.IsGet(request.Method) && !HttpMethods.IsHead(request.Method)
            && request.Headers.Origin is { Count: > 0 } origin
            && !(Uri.TryCreate(origin.ToString(), UriKind.Absolute, out var from)
                 && string.Equals(from.Authority, request.Host.Value, StringComparison.OrdinalIgnoreCase)))
            return Problem(403, $"A request from the page at '{origin}' may not change the Studio; use the Studio's own pages or a script.");
        return await next(invocation);
    }

    private static async Task<IResult> ListModelsAsync(IModelCatalog catalog, CancellationToken cancellationToken)
    {
        var models = new JsonArray();
        foreach (var model in await catalog.ListModelsAsync(cancellationToken))
        {
            var entry = new JsonObject
            {
                ["name"] = model.Name,
                ["class_name"] = model.ClassName,
                ["safetensors_bytes"] = model.SafetensorsBytes,
                ["problem"] = model.Problem,
            };
            if (model.Problem is null && ModelFamilies.ForClass(model.ClassName) is not null)
            {
                try
                {
                    // from config.json alone: listing never loads weights
                    var estimate = ModelFamilies.EstimateFolder(model.FolderPath);
                    entry["parameters"] = estimate.Parameters;
                    entry["macs"] = estimate.Macs;
                    entry["sample_size"] = new JsonArray(estimate.SampleSize.Select(s => (JsonNode)s).ToArray());
                }
                catch (Exception e) when (UserErrors.Is(e))
                {
                    entry["problem"] = e.Message;
                }
            }
            models.Add(entry);
        }
        return Results.Text(models.ToJsonString(Json), "application/json");
    }

    private static async Task<IResult> UploadAsync(string name, HttpContext context, ModelUploadService uploads, IOptions<StudioOptions> options)
    {
        long limit = options.Value.MaxUploadBytes;
        if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } bodySize) bodySize.MaxRequestBodySize = limit;
        if (context.Request.ContentLength > limit)
            return Problem(413, $"The upload is larger than the {ByteSize.Format(limit)} limit (Studio:MaxUploadBytes).");
        try
        {
            string listed = await uploads.ImportZipAsync(context.Request.Body, name, context.RequestAborted);
            return Results.Json(new JsonObject { ["name"] = listed }, statusCode: 201);
        }
        catch (ModelUploadException e)
        {
            return Problem(e.StatusCode, e.Message);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == 413)
        {
            return Problem(413, $"The upload is larger than the {ByteSize.Format(limit)} limit (Studio:MaxUploadBytes).");
        }
    }

    /// <summary>Adds a model folder by path (<c>{"name", "path"}</c>), only from inside a configured model root.</summary>
    private static async Task<IResult> AddByPathAsync(HttpContext context, ModelLinks links, IOptions<StudioOptions> options)
    {
        try
        {
            var fields = new Fields(await ReadBodyAsync(context, options.Value.MaxJsonBodyBytes));
            string name = fields.String("name"), path = fields.String("path");
            fields.RejectUnknown();
            string listed = await links.AddAsync(path, name, context.RequestAborted);
            return Results.Json(new JsonObject { ["name"] = listed }, statusCode: 201);
        }
        catch (ApiInputException e)
        {
            return Problem(e.StatusCode, e.Message);
        }
        catch (ModelUploadException e)
        {
            return Problem(e.StatusCode, e.Message);
        }
    }

    private static async Task<IResult> CreateJobAsync(HttpContext context, IModelCatalog catalog, IJobQueue queue, IOptions<StudioOptions> options)
    {
        JsonObject body;
        try
        {
            body = await ReadBodyAsync(context, options.Value.MaxJsonBodyBytes);
        }
        catch (ApiInputException e)
        {
            return Problem(e.StatusCode, e.Message);
        }
        try
        {
            var fields = new Fields(body);
            string kind = fields.String("kind");
            var models = await catalog.ListModelsAsync(context.RequestAborted);
            var outputs = RepositoryLayout.ResolveOutputRoot(options.Value.OutputRoot, RepositoryLayout.FindRoot());
            StudioJob job = kind switch
            {
                "prune" => PruneJobFrom(fields, models, outputs),
                "distill" => DistillJobFrom(fields, models, outputs),
                "compare" => CompareJobFrom(fields, models, outputs),
                "export" => ExportJobFrom(fields, models, outputs),
                "sample" => SampleJobFrom(fields, models, outputs),
                "evaluate" => EvaluateJobFrom(fields, models, outputs),
                "batch" => BatchJobFrom(fields, models, outputs),
                _ => throw new ApiInputException($"'kind' must be prune, distill, compare, export, sample, evaluate or batch, not '{kind}'."),
            };
            fields.RejectUnknown();
            var snapshot = await queue.EnqueueAsync(job, context.RequestAborted);
            return Results.Json(new JsonObject { ["id"] = snapshot.Id.ToString() }, statusCode: 202);
        }
        catch (ApiInputException e)
        {
            return Problem(e.StatusCode, e.Message);
        }
    }

    private static PruneJob PruneJobFrom(Fields f, IReadOnlyList<ModelSummary> models, string outputs)
    {
        var model = ModelNamed(f.String("model"), models, "model");
        string method = f.String("method");
        var entry = ImportanceCriteria.Find(method)
            ?? throw new ApiInputException($"'method' must be one of {string.Join(", ", ImportanceCriteria.Names)}, not '{method}'.");
        double target = f.Double("target_params");
        if (!(target is > 0 and < 1)) throw new ApiInputException($"'target_params' must be strictly between 0 and 1, not {target.ToString(CultureInfo.InvariantCulture)}.");
        var request = new PruneRequest
        {
            ModelPath = model.FolderPath,
            Method = entry.Name,
            TargetParams = target,
            OutputPath = OutputNames.NewFolder(Path.Combine(outputs, StudioOptions.PrunedFolder),
                string.Create(CultureInfo.InvariantCulture, $"{model.Name}-{entry.Name}-{target * 100:0.#}")),
            Seed = f.OptionalLong("seed") ?? 0,
            Iterations = f.OptionalInt("iterations", 1) ?? 100,
            Steps = f.OptionalInt("steps", 1) ?? 10,
            Calibration = f.OptionalInt("calibration", 1) ?? 16,
            Budget = f.OptionalEnum<LayerBudget>("budget") ?? LayerBudget.Params,
            Selection = f.OptionalEnum<LayerSelection>("selection") ?? LayerSelection.Knapsack,
        };
        if (!entry.RemovesLayers && (request.Budget != LayerBudget.Params || request.Selection != LayerSelection.Knapsack))
            throw new ApiInputException($"'budget' and 'selection' apply to the layer methods, not to {entry.Name}.");
        var prompts = f.OptionalTexts("prompts");
        double? guidance = f.OptionalDouble("guidance");
        if (model.IsPipeline)
        {
            // what the core refuses on a pipeline, refused here before the job is queued (taylor and learnable-depth calibrate
            // on the pipeline's own samples from the prompts, at the core's default sampling settings)
            if (prompts is not null && entry.Workload == PruneWorkload.WeightsOnly)
                throw new ApiInputException($"'prompts': {entry.Name} does not run the model, so it reads no prompts; leave 'prompts' out.");
            if (guidance is double g && (g is < 1 or > 30 || entry.Name is not ("ecodiff" or "ecodiff-layer")))
                throw new ApiInputException("'guidance' (EcoDiff's calibration guidance against the empty prompt) must be from 1 to 30, for ecodiff and ecodiff-layer.");
            request = request with
            {
                Prompts = prompts,
                EcoDiff = new EcoDiffOptions { GuidanceScale = guidance ?? (entry.Name is "ecodiff" or "ecodiff-layer" ? StableDiffusionSampleRunner.DefaultGuidanceScale : 1.0) },
            };
        }
        else if (prompts is not null || guidance is not null)
            throw new ApiInputException($"'prompts' and 'guidance' calibrate a Stable Diffusion pipeline; {model.Name} is a {model.ClassName}.");
        return new PruneJob(request, f.OptionalBool("evaluate") ?? false ? QuickLook(f, outputs) : null);
    }

    /// <summary>
    /// A distillation of <c>student</c> from <c>teacher</c>. Two Stable Diffusion pipelines distil without a dataset, on
    /// the teacher's samples (<c>prompts</c>, default the built-in calibration prompts; <c>teacher_samples</c> per prompt,
    /// default 4; <c>teacher_steps</c>, default 25; <c>teacher_guidance</c>, default 7.5), 4 latents per step unless
    /// <c>batch</c> says otherwise; a pipeline beside a model, and those fields for models, are refused.
    /// </summary>
    private static DistillJob DistillJobFrom(Fields f, IReadOnlyList<ModelSummary> models, string outputs)
    {
        var student = ModelNamed(f.String("student"), models, "student");
        var teacher = ModelNamed(f.String("teacher"), models, "teacher");
        if (student.FolderPath == teacher.FolderPath) throw new ApiInputException("'teacher' must be another model than 'student'.");
        if (student.IsPipeline && !teacher.IsPipeline)
            throw new ApiInputException($"'teacher': {student.Name} is a Stable Diffusion pipeline, so its teacher must be one too (its text encoder makes the prompts' " +
                $"states and its U-Net the targets); {teacher.Name} is a {teacher.ClassName}. Give the pipeline {student.Name} was pruned from.");
        if (!student.IsPipeline && teacher.IsPipeline)
            throw new ApiInputException($"'student': the teacher {teacher.Name} is a Stable Diffusion pipeline, so the student must be one too; {student.Name} is a " +
                $"{student.ClassName}. Give the pruned pipeline (a prune job's output for {teacher.Name}).");
        var kd = f.OptionalEnum<KnowledgeDistillation>("kd") ?? KnowledgeDistillation.Normalized;
        int steps = f.OptionalInt("steps", 1) ?? 200;
        var request = new DistillRequest
        {
            StudentPath = student.FolderPath,
            TeacherPath = teacher.FolderPath,
            OutputPath = OutputNames.NewFolder(Path.Combine(outputs, StudioOptions.DistilledFolder),
                string.Create(CultureInfo.InvariantCulture, $"{student.Name}-{kd.ToString().ToLowerInvariant()}-{steps}")),
            Kd = kd,
            Steps = steps,
            BatchSize = f.OptionalInt("batch", 1) ?? (student.IsPipeline ? PipelineDistillBatch : 32),
            LearningRate = f.OptionalDouble("lr") is double lr ? (lr is > 0 and < 1 ? lr : throw new ApiInputException("'lr' must be in (0, 1).")) : 1e-4,
            Seed = f.OptionalLong("seed") ?? 0,
        };
        var prompts = f.OptionalTexts("prompts");
        int? teacherSamples = f.OptionalInt("teacher_samples", 1);
        int? teacherSteps = f.OptionalInt("teacher_steps", 1);
        double? teacherGuidance = f.OptionalDouble("teacher_guidance");
        if (student.IsPipeline)
        {
            if (teacherSamples > 64) throw new ApiInputException($"'teacher_samples' (latents the teacher samples per prompt) must be from 1 to 64, not {teacherSamples}.");
            if (teacherSteps > 1000) throw new ApiInputException($"'teacher_steps' (DDIM steps per teacher sample) must be from 1 to 1000, not {teacherSteps}.");
            if (teacherGuidance is double g && g is < 0 or > 30)
                throw new ApiInputException($"'teacher_guidance' must be from 0 to 30 (1 or less: the prompt alone), not {g.ToString(CultureInfo.InvariantCulture)}.");
            var d = new DistillRequest { StudentPath = "", TeacherPath = "", OutputPath = "" };
            request = request with
            {
                Prompts = prompts,
                TeacherSamplesPerPrompt = teacherSamples ?? d.TeacherSamplesPerPrompt,
                TeacherSampleSteps = teacherSteps ?? d.TeacherSampleSteps,
                TeacherGuidanceScale = teacherGuidance ?? d.TeacherGuidanceScale,
            };
        }
        else if (prompts is not null || teacherSamples is not null || teacherSteps is not null || teacherGuidance is not null)
            throw new ApiInputException($"'prompts', 'teacher_samples', 'teacher_steps' and 'teacher_guidance' distil a Stable Diffusion pipeline on its teacher's samples; " +
                $"{student.Name} is a {student.ClassName}, which distils on images. Leave them out.");
        if (student.IsPipeline && f.OptionalString("runtime") is { } runtime && runtime != "torch")
            throw new ApiInputException("'runtime': a pipeline's quick look runs in TorchSharp only; use \"torch\" or leave it out.");
        return new DistillJob(request, f.OptionalBool("evaluate") ?? false ? (student.IsPipeline ? new QuickEvaluation() : QuickLook(f, outputs)) : null);
    }

    /// <summary>Latents per step when a pipeline's distillation names no batch: a text-conditioned U-Net's training step is costly on a CPU.</summary>
    internal const int PipelineDistillBatch = 4;

    private static CompareJob CompareJobFrom(Fields f, IReadOnlyList<ModelSummary> models, string outputs)
    {
        var names = f.Strings("models");
        if (names.Count is < CompareRequest.MinModels or > CompareRequest.MaxModels)
            throw new ApiInputException($"'models' must list {CompareRequest.MinModels} to {CompareRequest.MaxModels} models (the first is the reference), not {names.Count}.");
        var chosen = names.Select(name => ModelNamed(name, models, "models")).ToList();
        var request = new CompareRequest
        {
            ModelPaths = chosen.Select(m => m.FolderPath).ToList(),
            Names = chosen.Select(m => OutputNames.Shown(m.Name)).ToList(),
            OutputPath = OutputNames.NewFolder(Path.Combine(outputs, StudioOptions.ComparedFolder), "compare"),
            Samples = f.OptionalInt("samples", 2) ?? 64,
            Steps = f.OptionalInt("steps", 1) ?? 10,
            Seed = f.OptionalLong("seed") ?? 0,
            GridImages = f.OptionalInt("grid", 1) ?? 16,
            LatencyBatch = f.OptionalInt("latency_batch", 0) is int b ? (b == 0 ? null : b) : 1,
            Runtime = Runtime(f),
        };
        try
        {
            request.Check();
        }
        catch (ArgumentException e)
        {
            throw new ApiInputException(e.Message);
        }
        return new CompareJob(request);
    }

    private static ExportJob ExportJobFrom(Fields f, IReadOnlyList<ModelSummary> models, string outputs)
    {
        var model = ModelNamed(f.String("model"), models, "model");
        if (model.IsPipeline)
        {
            // an ONNX pipeline (text encoder, U-Net, VAE decoder, tokenizer, scheduler), in the exports folder as every bundle
            if (f.OptionalString("formats") is { } asked && asked.Trim() != "onnx")
                throw new ApiInputException($"'formats': {model.Name} is a Stable Diffusion pipeline, already in diffusers' safetensors layout; it exports as an " +
                    "ONNX pipeline only: give \"onnx\" or leave 'formats' out.");
            return new ExportJob(new ExportRequest
            {
                ModelPath = model.FolderPath,
                OutputPath = OutputNames.NewFolder(Path.Combine(outputs, StudioOptions.ExportsFolder), OutputNames.Shown(model.Name) + "-onnx"),
                Formats = [ExportFormat.Onnx],
            });
        }
        if (ModelFamilies.ForClass(model.ClassName) is null) throw new ApiInputException($"'model': {model.Name} is a {model.ClassName}, not a diffusion model to export.");
        IReadOnlyList<ExportFormat> formats;
        try
        {
            formats = ModelExporter.ParseFormats(f.OptionalString("formats") ?? "safetensors,onnx");
        }
        catch (ArgumentException e)
        {
            throw new ApiInputException($"'formats': {e.Message}");
        }
        return new ExportJob(new ExportRequest
        {
            ModelPath = model.FolderPath,
            OutputPath = OutputNames.NewFolder(Path.Combine(outputs, StudioOptions.ExportsFolder), OutputNames.Shown(model.Name)),
            Formats = formats,
        });
    }

    private static SampleJob SampleJobFrom(Fields f, IReadOnlyList<ModelSummary> models, string outputs)
    {
        var model = ModelNamed(f.String("model"), models, "model");
        if (model.IsPipeline) return PipelineSampleJobFrom(f, model, outputs);
        if (f.OptionalString("prompt") is not null || f.OptionalString("negative_prompt") is not null)
            throw new ApiInputException($"'prompt' is for Stable Diffusion pipelines; {model.Name} is a {model.ClassName}.");
        if (ModelFamilies.ForClass(model.ClassName) is null) throw new ApiInputException($"'model': {model.Name} is a {model.ClassName}, not a diffusion model to sample.");
        string scheduler = f.OptionalString("scheduler") ?? "ddim";
        if (!Schedulers.Scheduler.ShortNames.ContainsKey(scheduler))
            throw new ApiInputException($"'scheduler' must be one of {string.Join(", ", Schedulers.Scheduler.ShortNames.Keys)}, not '{scheduler}'.");
        int count = f.OptionalInt("count", 1) ?? 16;
        if (count > 64) throw new ApiInputException($"'count' must be at most 64, not {count}.");
        double guidance = f.OptionalDouble("guidance") ?? 1;
        if (guidance is < 1 or > 20) throw new ApiInputException("'guidance' must be between 1 and 20.");
        string runtime = Runtime(f);
        return new SampleJob(new DiffusionPrune.Inference.SampleRequest
        {
            ModelPath = model.FolderPath,
            SchedulerName = scheduler,
            Steps = f.OptionalInt("steps", 1) ?? 25,
            Count = count,
            Seed = f.OptionalLong("seed") ?? 0,
            GuidanceScale = guidance,
            OutputPath = OutputNames.NewFolder(Path.Combine(outputs, StudioOptions.SamplesFolder), OutputNames.Shown(model.Name)) + ".png",
        }, runtime == "onnx" ? Path.Combine(outputs, StudioOptions.OnnxCacheFolder) : null);
    }

    /// <summary>
    /// Text to image from a Stable Diffusion pipeline: a prompt (required), an optional negative prompt, guidance (diffusers'
    /// 7.5 by default), the pipeline's own scheduler unless one is named, one image by default (at most 16); TorchSharp only.
    /// </summary>
    private static SampleJob PipelineSampleJobFrom(Fields f, ModelSummary model, string outputs)
    {
        string prompt = f.String("prompt");
        string? negative = f.OptionalString("negative_prompt");
        string? scheduler = f.OptionalString("scheduler");
        if (scheduler is not null && !Schedulers.Scheduler.ShortNames.ContainsKey(scheduler))
            throw new ApiInputException($"'scheduler' must be one of {string.Join(", ", Schedulers.Scheduler.ShortNames.Keys)}, not '{scheduler}'.");
        int count = f.OptionalInt("count", 1) ?? StableDiffusionSampleRunner.DefaultCount;
        if (count > 16) throw new ApiInputException($"'count' must be at most 16 for a pipeline, not {count}.");
        double guidance = f.OptionalDouble("guidance") ?? StableDiffusionSampleRunner.DefaultGuidanceScale;
        if (guidance is < 0 or > 30) throw new ApiInputException("'guidance' must be between 0 and 30 (1 or less: the prompt alone).");
        if ((f.OptionalString("runtime") ?? "torch") != "torch")
            throw new ApiInputException("'runtime': Stable Diffusion pipelines run in TorchSharp only (ONNX Runtime does not run them yet); use \"torch\" or leave it out.");
        return new SampleJob(new DiffusionPrune.Inference.SampleRequest
        {
            ModelPath = model.FolderPath,
            SchedulerName = scheduler,
            Steps = f.OptionalInt("steps", 1) ?? 25,
            Count = count,
            Seed = f.OptionalLong("seed") ?? 0,
            GuidanceScale = guidance,
            Prompt = prompt,
            NegativePrompt = negative,
            OutputPath = OutputNames.NewFolder(Path.Combine(outputs, StudioOptions.SamplesFolder), OutputNames.Shown(model.Name)) + ".png",
        });
    }

    /// <summary>The quick look after a prune or distil job, in the runtime the request asks for (ONNX Runtime by default).</summary>
    private static QuickEvaluation QuickLook(Fields f, string outputs) =>
        new(OnnxCache: Runtime(f) == "onnx" ? Path.Combine(outputs, StudioOptions.OnnxCacheFolder) : null);

    /// <summary>What runs the network for sample, compare and evaluate jobs: onnx (ONNX Runtime, the default) or torch.</summary>
    private static string Runtime(Fields f)
    {
        string runtime = f.OptionalString("runtime") ?? "onnx";
        return runtime is "onnx" or "torch" ? runtime : throw new ApiInputException($"'runtime' must be onnx or torch, not '{runtime}'.");
    }

    private static StudioJob EvaluateJobFrom(Fields f, IReadOnlyList<ModelSummary> models, string outputs)
    {
        var model = ModelNamed(f.String("model"), models, "model");
        if (model.IsPipeline) return PipelineEvaluateJobFrom(f, model, models, outputs);
        if (f.OptionalTexts("prompts") is not null || f.OptionalDouble("guidance") is not null)
            throw new ApiInputException($"'prompts' and 'guidance' are for evaluating a Stable Diffusion pipeline; {model.Name} is a {model.ClassName}. Leave them out.");
        if (ModelFamilies.ForClass(model.ClassName) is null) throw new ApiInputException($"'model': {model.Name} is a {model.ClassName}, not a diffusion model to evaluate.");
        var reference = f.OptionalString("reference") is { } name ? ModelNamed(name, models, "reference") : null;
        if (reference?.FolderPath == model.FolderPath) throw new ApiInputException("'reference' must be another model than 'model'.");
        int samples = f.OptionalInt("samples", 2) ?? 256;
        var request = new EvalRequest
        {
            ModelPath = model.FolderPath,
            ReferenceModelPath = reference?.FolderPath,
            Samples = samples,
            Steps = f.OptionalInt("steps", 1) ?? 25,
            Seed = f.OptionalLong("seed") ?? 0,
            BatchSize = Math.Min(samples, 100),
        };
        string report = ModelEvaluations.NewReportPath(outputs, model.Name);
        return new EvaluateJob(request, report, Runtime(f) == "onnx" ? Path.Combine(outputs, StudioOptions.OnnxCacheFolder) : null);
    }

    /// <summary>
    /// A Stable Diffusion pipeline against a reference pipeline from the same prompts and noise (SSIM, PSNR, latent MSE and
    /// statistic, U-Net cost; no FID-proxy). <c>reference</c> defaults to the pipeline its prune report names as its
    /// original (also for a distilled pipeline, which carries that report) and is required when there is none;
    /// <c>prompts</c> default to the evaluator's held-out prompts, <c>samples</c> (images per prompt) to 2, at most 16,
    /// <c>steps</c> to 25, <c>guidance</c> to 7.5, <c>seed</c> to 0; TorchSharp only.
    /// </summary>
    private static PipelineEvaluateJob PipelineEvaluateJobFrom(Fields f, ModelSummary model, IReadOnlyList<ModelSummary> models, string outputs)
    {
        var reference = f.OptionalString("reference") is { } name
            ? ModelNamed(name, models, "reference")
            : ModelOrigins.PrunedFrom(model.FolderPath, models.Where(m => m.IsPipeline))
              ?? throw new ApiInputException($"'reference' is required: {model.Name} is a Stable Diffusion pipeline, evaluated against a reference pipeline " +
                  "from the same prompts and noise, and it has no prune report naming its original in the catalog. Name the pipeline to compare it with.");
        if (!reference.IsPipeline)
            throw new ApiInputException($"'reference': {model.Name} is a Stable Diffusion pipeline and is evaluated against a pipeline; {reference.Name} is a {reference.ClassName}.");
        if (reference.FolderPath == model.FolderPath) throw new ApiInputException("'reference' must be another pipeline than 'model'.");
        int imagesPerPrompt = f.OptionalInt("samples", 1) ?? 2;
        if (imagesPerPrompt > 16) throw new ApiInputException($"'samples' (images per prompt, for a pipeline) must be at most 16, not {imagesPerPrompt}.");
        double guidance = f.OptionalDouble("guidance") ?? StableDiffusionSampleRunner.DefaultGuidanceScale;
        if (guidance is < 0 or > 30) throw new ApiInputException("'guidance' must be between 0 and 30 (1 or less: the prompt alone).");
        if ((f.OptionalString("runtime") ?? "torch") != "torch")
            throw new ApiInputException("'runtime': Stable Diffusion pipelines are evaluated in TorchSharp only; use \"torch\" or leave it out.");
        var request = new StableDiffusionEvalRequest
        {
            ModelPath = model.FolderPath,
            ReferencePath = reference.FolderPath,
            Prompts = f.OptionalTexts("prompts"),
            ImagesPerPrompt = imagesPerPrompt,
            Steps = f.OptionalInt("steps", 1) ?? 25,
            GuidanceScale = guidance,
            Seed = f.OptionalLong("seed") ?? 0,
        };
        return new PipelineEvaluateJob(request, ModelEvaluations.NewReportPath(outputs, model.Name), model.Name, reference.Name);
    }

    /// <summary>
    /// A batch over catalog models: <c>models</c>, <c>methods</c> and <c>targets</c>, and optional settings, each checked
    /// here by name and then by the core (<see cref="BatchPlan"/>) before the plan is written to a new folder.
    /// </summary>
    private static BatchJob BatchJobFrom(Fields f, IReadOnlyList<ModelSummary> models, string outputs)
    {
        var names = f.Strings("models");
        if (names.Count == 0) throw new ApiInputException("'models' must list at least one model.");
        var chosen = names.Select(name => ModelNamed(name, models, "models")).ToList();
        if (chosen.FirstOrDefault(m => ModelFamilies.ForClass(m.ClassName) is null) is { } other)
            throw new ApiInputException($"'models': {other.Name} is a {other.ClassName}, not a diffusion model to prune.");
        if (names.Distinct(StringComparer.Ordinal).Count() != names.Count) throw new ApiInputException("'models' lists a model twice.");
        var methods = f.Strings("methods");
        if (methods.FirstOrDefault(m => !BatchPlan.KnownMethods.Contains(m)) is { } unknown)
            throw new ApiInputException($"'methods' must be from {string.Join(", ", BatchPlan.KnownMethods)}, not '{unknown}'.");
        if (methods.Distinct(StringComparer.Ordinal).Count() != methods.Count) throw new ApiInputException("'methods' lists a method twice.");
        var targets = f.Doubles("targets");
        if (targets.Count == 0) throw new ApiInputException("'targets' must list at least one fraction to remove.");
        foreach (double target in targets)
            if (!(target is > 0 and < 1))
                throw new ApiInputException($"'targets' must be fractions strictly between 0 and 1, not {target.ToString(CultureInfo.InvariantCulture)}.");
        IReadOnlyList<ExportFormat>? formats = null;
        if (f.OptionalString("formats") is { } list)
        {
            try
            {
                formats = ModelExporter.ParseFormats(list);
            }
            catch (ArgumentException e)
            {
                throw new ApiInputException($"'formats': {e.Message}");
            }
        }
        var d = new BatchSettings();
        var settings = new BatchSettings
        {
            Methods = methods,
            Targets = targets,
            PruneSteps = f.OptionalInt("prune_steps", 1) ?? d.PruneSteps,
            Iterations = f.OptionalInt("iterations", 1) ?? d.Iterations,
            Calibration = f.OptionalInt("calibration", 1) ?? d.Calibration,
            PruneSeed = f.OptionalLong("prune_seed") ?? d.PruneSeed,
            EvalSamples = f.OptionalInt("eval_samples", 2) ?? d.EvalSamples,
            EvalSteps = f.OptionalInt("eval_steps", 1) ?? d.EvalSteps,
            EvalSeed = f.OptionalLong("eval_seed") ?? d.EvalSeed,
            EvalRuntime = Runtime(f),
            Formats = formats ?? d.Formats,
            Latency = f.OptionalBool("latency") ?? d.Latency,
            LatencyBatches = f.OptionalInts("latency_batches", 1, 1024) ?? d.LatencyBatches,
            LatencyWarmup = f.OptionalInt("latency_warmup", 0) ?? d.LatencyWarmup,
            LatencyRuns = f.OptionalInt("latency_runs", 1) ?? d.LatencyRuns,
        };
        f.RejectUnknown(); // before the plan's folder is written
        try
        {
            return BatchJob.Create(chosen, settings, Path.Combine(outputs, StudioOptions.BatchesFolder));
        }
        catch (BatchPlanException e)
        {
            throw new ApiInputException(e.Message);
        }
    }

    /// <summary>A sample grid a sample job wrote; only a plain <c>NAME.png</c> under the samples folder.</summary>
    private static IResult SampleImage(string file, IOptions<StudioOptions> options)
    {
        string root = Path.Combine(RepositoryLayout.ResolveOutputRoot(options.Value.OutputRoot, RepositoryLayout.FindRoot()), StudioOptions.SamplesFolder);
        bool plain = System.Text.RegularExpressions.Regex.IsMatch(file, "^[A-Za-z0-9][A-Za-z0-9._-]{0,160}\\.png$") && !file.Contains("..", StringComparison.Ordinal);
        string path = Path.Combine(root, file);
        return plain && File.Exists(path) ? Results.File(path, "image/png") : Problem(404, $"There is no sample '{file}'.");
    }

    private static IResult ListBundles(Export.BundleFolders bundles) =>
        Results.Text(new JsonArray(bundles.List().Select(b => (JsonNode)new JsonObject
        {
            ["name"] = b.Name,
            ["class_name"] = b.ClassName,
            ["parameters"] = b.Parameters,
            ["macs"] = b.Macs,
            ["pipeline"] = b.IsPipeline,
            ["zip_bytes"] = b.ZipBytes,
            ["download"] = $"/api/exports/{b.Name}.zip",
        }).ToArray()).ToJsonString(Json), "application/json");

    /// <summary>A bundle's zip, as an attachment; only <c>NAME.zip</c> of a listed bundle.</summary>
    private static IResult BundleZip(string file, Export.BundleFolders bundles) =>
        file.EndsWith(".zip", StringComparison.Ordinal) && bundles.Find(file[..^4]) is { } bundle
            ? Results.File(bundle.Zip, "application/zip", file, enableRangeProcessing: true)
            : Problem(404, $"There is no bundle '{file}'.");

    /// <summary>
    /// One file of a bundle (model.onnx, onnx_model.json, scheduler_config.json, config.json, README.md; for a pipeline,
    /// <see cref="Export.BundleFolders.ServedPipelineFiles"/> such as unet/model.onnx), for the on-device page.
    /// </summary>
    private static IResult BundleFile(string name, string file, Export.BundleFolders bundles) =>
        bundles.FileOf(name, file) is { } path
            ? Results.File(path, Path.GetExtension(path) switch { ".json" => "application/json", ".md" => "text/markdown; charset=utf-8", _ => "application/octet-stream" })
            : Problem(404, $"There is no file '{file}' in a bundle '{name}'.");

    /// <summary>One file in a component folder of a pipeline bundle (e.g. <c>unet/model.onnx</c>), for the on-device page; 404 for anything not in <see cref="Export.BundleFolders.ServedPipelineFiles"/>.</summary>
    private static IResult BundleComponentFile(string name, string component, string file, Export.BundleFolders bundles) =>
        BundleFile(name, $"{component}/{file}", bundles);

    /// <summary>The longest prompt <see cref="TokenizeAsync"/> takes, in characters: CLIP reads 75 tokens, and no prompt that long needs more.</summary>
    public const int MaxPromptCharacters = 2000;

    /// <summary>
    /// <c>POST /api/exports/{name}/tokenize</c> with <c>{"prompt": "...", "negative_prompt": "..."}</c> (the negative prompt
    /// optional, "" by default; either may be empty): both texts as the ids the pipeline bundle's text encoder takes, from
    /// its own tokenizer files. Answers <c>input_ids</c>, <c>negative_input_ids</c>, <c>model_max_length</c>, and per text the
    /// token count and whether it was cut. 404 for no such bundle, 400 for a bundle that is not a pipeline or bad fields.
    /// </summary>
    private static async Task<IResult> TokenizeAsync(string name, HttpContext context, Export.BundleFolders bundles, Export.BundleTokenizers tokenizers,
        IOptions<StudioOptions> options)
    {
        if (bundles.Find(name) is not { } bundle) return Problem(404, $"There is no bundle '{name}'.");
        try
        {
            if (!bundle.IsPipeline)
                throw new ApiInputException($"Bundle '{name}' is a {bundle.ClassName ?? "weights-only"} bundle, not an {Inference.Onnx.OnnxPipelineLayout.ClassName}; " +
                    "only a Stable Diffusion pipeline bundle has a tokenizer.");
            var body = await ReadBodyAsync(context, options.Value.MaxJsonBodyBytes);
            var unknown = body.Select(p => p.Key).Where(k => k is not ("prompt" or "negative_prompt")).ToList();
            if (unknown.Count > 0)
                throw new ApiInputException($"Unknown field(s): {string.Join(", ", unknown.Select(k => $"'{k}'"))}; give 'prompt' and, optionally, 'negative_prompt'.");
            string Text(string key, bool required)
            {
                if (!body.TryGetPropertyValue(key, out var node) || node is null)
                    return required ? throw new ApiInputException($"'{key}' is required and must be a string (it may be empty).") : "";
                if (node is not JsonValue value || !value.TryGetValue<string>(out var text))
                    throw new ApiInputException($"'{key}' must be a string, not {node.ToJsonString()}.");
                if (text.Length > MaxPromptCharacters)
                    throw new ApiInputException(string.Create(CultureInfo.InvariantCulture,
                        $"'{key}' is {text.Length:N0} characters; at most {MaxPromptCharacters:N0} are taken (the text encoder reads only the first tokens anyway)."));
                return text;
            }
            string prompt = Text("prompt", required: true), negative = Text("negative_prompt", required: false);
            var positive = tokenizers.Tokenize(bundle, prompt);
            var negativeIds = tokenizers.Tokenize(bundle, negative);
            return Results.Text(new JsonObject
            {
                ["input_ids"] = new JsonArray(positive.InputIds.Select(i => (JsonNode)i).ToArray()),
                ["negative_input_ids"] = new JsonArray(negativeIds.InputIds.Select(i => (JsonNode)i).ToArray()),
                ["model_max_length"] = positive.InputIds.Length,
                ["prompt_tokens"] = positive.Tokens,
                ["prompt_truncated"] = positive.Truncated,
                ["negative_prompt_tokens"] = negativeIds.Tokens,
                ["negative_prompt_truncated"] = negativeIds.Truncated,
            }.ToJsonString(Json), "application/json");
        }
        catch (ApiInputException e)
        {
            return Problem(e.StatusCode, e.Message);
        }
        catch (Models.ModelFormatException e)
        {
            return Problem(409, $"Bundle '{name}' has a tokenizer that cannot be read: {e.Message} Export the pipeline again.");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Problem(409, $"Bundle '{name}': its tokenizer files could not be read ({DiffusionPrune.Formats.Messages.OneLine(e.Message)}). Export the pipeline again.");
        }
    }

    private static IResult ListComparisons(ComparisonFolders comparisons) =>
        Results.Text(new JsonArray(comparisons.List().Select(c => (JsonNode)new JsonObject
        {
            ["name"] = c.Name,
            ["models"] = new JsonArray(c.Report.Models.Select(m => (JsonNode)m.Name).ToArray()),
            ["created_at"] = c.Report.CreatedAt.ToString("O", CultureInfo.InvariantCulture),
            ["url"] = $"/compare/{c.Name}",
        }).ToArray()).ToJsonString(Json), "application/json");

    /// <summary>A comparison's PNG, markdown or JSON file; <c>?download=1</c> asks the browser to save it.</summary>
    private static IResult ComparisonFile(string name, string file, HttpContext context, ComparisonFolders comparisons)
    {
        if (comparisons.FileOf(name, file) is not { } path) return Problem(404, $"There is no file '{file}' in a comparison '{name}'.");
        string type = Path.GetExtension(path) switch { ".png" => "image/png", ".md" => "text/markdown; charset=utf-8", _ => "application/json" };
        bool download = context.Request.Query["download"] == "1";
        return Results.File(path, type, download ? $"{name}-{file}" : null);
    }

    private static IResult ListBatches(BatchFolders batches) =>
        Results.Text(new JsonArray(batches.List().Select(b => (JsonNode)new JsonObject
        {
            ["name"] = b.Name,
            ["models"] = b.Plan is { } plan ? new JsonArray(plan.Models.Select(m => (JsonNode)m.Name).ToArray()) : null,
            ["methods"] = b.Plan is { } p ? new JsonArray(p.Methods.Select(m => (JsonNode)m).ToArray()) : null,
            ["targets"] = b.Plan is { } q ? new JsonArray(q.Targets.Order().Select(t => (JsonNode)t).ToArray()) : null,
            ["finished"] = b.Rows.Count,
            ["unfinished"] = b.Unfinished.Count,
            ["failed"] = b.Failed.Count,
            ["written_at"] = b.WrittenAt.ToString("O", CultureInfo.InvariantCulture),
            ["url"] = $"/batch/{b.Name}",
        }).ToArray()).ToJsonString(Json), "application/json");

    /// <summary>A batch's summary.md, summary.csv, pareto.png or JSON file; <c>?download=1</c> asks the browser to save it.</summary>
    private static IResult BatchFile(string name, string file, HttpContext context, BatchFolders batches)
    {
        if (batches.FileOf(name, file) is not { } path) return Problem(404, $"There is no file '{file}' in a batch '{name}'.");
        string type = Path.GetExtension(path) switch
        {
            ".png" => "image/png",
            ".md" => "text/markdown; charset=utf-8",
            ".csv" => "text/csv; charset=utf-8",
            _ => "application/json",
        };
        bool download = context.Request.Query["download"] == "1";
        return Results.File(path, type, download ? $"{name}-{file}" : null);
    }

    /// <summary>A model by the name <c>/api/models</c> lists; never a path.</summary>
    private static ModelSummary ModelNamed(string name, IReadOnlyList<ModelSummary> models, string field)
    {
        if (name.Contains("..", StringComparison.Ordinal) || name.Contains('\\') || name.StartsWith('/') || Path.IsPathRooted(name))
            throw new ApiInputException($"'{field}' must be a model name as GET /api/models lists it, not a path ('{name}').");
        var model = models.FirstOrDefault(m => m.Name == name)
            ?? throw new ApiInputException($"'{field}': there is no model named '{name}' (GET /api/models lists them).");
        if (model.Problem is not null) throw new ApiInputException($"'{field}': {model.Problem}");
        return model;
    }

    private static IResult GetJob(string id, JobStateService state) =>
        Guid.TryParse(id, out var guid) && state.Find(guid) is { } job
            ? Results.Text(Describe(job).ToJsonString(Json), "application/json")
            : Problem(404, $"There is no job '{id}'.");

    private static IResult CancelJob(string id, JobStateService state, IJobQueue queue)
    {
        if (!Guid.TryParse(id, out var guid) || state.Find(guid) is not { } job) return Problem(404, $"There is no job '{id}'.");
        if (job.IsFinished) return Problem(409, $"Job '{id}' has finished ({StatusName(job.Status)}); there is nothing to cancel.");
        if (!queue.Cancel(guid)) return Problem(409, $"Job '{id}' has finished; there is nothing to cancel.");
        return Results.Accepted(value: new JsonObject { ["id"] = id, ["status"] = "cancelling" });
    }

    private static async Task<IResult> ResumeJobAsync(string id, JobStateService state, IJobQueue queue)
    {
        if (!Guid.TryParse(id, out var guid) || state.Find(guid) is not { } job) return Problem(404, $"There is no job '{id}'.");
        if (job.Status != JobStatus.Interrupted) return Problem(409, $"Job '{id}' is {StatusName(job.Status)}; only an interrupted job can be resumed.");
        try
        {
            var queued = await queue.ResumeAsync(guid);
            return queued is null
                ? Problem(409, state.Find(guid) is { Status: not JobStatus.Interrupted } now
                    ? $"Job '{id}' is {StatusName(now.Status)}; it was resumed already."
                    : $"Job '{id}' kept no request to run again; start it again.")
                : Results.Json(new JsonObject { ["id"] = id, ["status"] = StatusName(queued.Status) }, statusCode: 202);
        }
        catch (ArgumentException e)
        {
            return Problem(409, e.Message);
        }
    }

    /// <summary>A job as the API shows it; <c>result.output_model</c> is the name <c>/api/models</c> lists it by.</summary>
    public static JsonObject Describe(JobSnapshot job)
    {
        var o = new JsonObject
        {
            ["id"] = job.Id.ToString(),
            ["kind"] = job.Kind,
            ["name"] = job.Name,
            ["status"] = StatusName(job.Status),
            ["progress"] = job.Progress,
            ["message"] = job.Message,
            ["error"] = job.Error,
            ["enqueued_at"] = job.EnqueuedAt.ToString("O", CultureInfo.InvariantCulture),
            ["started_at"] = job.StartedAt?.ToString("O", CultureInfo.InvariantCulture),
            ["finished_at"] = job.FinishedAt?.ToString("O", CultureInfo.InvariantCulture),
        };
        if (job.Status == JobStatus.Succeeded)
        {
            var result = new JsonObject { ["summary"] = job.Result };
            if (job.Kind == "evaluate" && job.OutputPath is { } report && File.Exists(report))
            {
                result["report"] = JsonNode.Parse(File.ReadAllText(report)); // the figures themselves (names and hashes, no local paths)
            }
            else if (job.Kind == "sample" && job.OutputPath is { } image)
            {
                result["image"] = $"/api/samples/{Path.GetFileName(image)}";
            }
            else if (job.Kind == "export" && job.OutputPath is { } exported)
            {
                string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(exported));
                result["bundle"] = name;
                result["download"] = $"/api/exports/{name}.zip";
            }
            else if (job.Kind == "compare" && job.OutputPath is { } compared)
            {
                string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(compared));
                result["comparison"] = name;
                result["url"] = $"/compare/{name}";
            }
            else if (job.Kind == "batch" && job.OutputPath is { } batch)
            {
                string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(batch));
                result["batch"] = name;
                result["url"] = $"/batch/{name}";
                result["summary_md"] = $"/api/batches/{name}/{BatchSummary.MarkdownName}";
                result["summary_csv"] = $"/api/batches/{name}/{BatchSummary.CsvName}";
                result["pareto"] = $"/api/batches/{name}/{BatchSummary.ParetoName}";
            }
            else if (job.OutputPath is { } output)
                result["output_model"] = $"{Path.GetFileName(Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(output)))}/{Path.GetFileName(Path.TrimEndingDirectorySeparator(output))}";
            o["result"] = result;
        }
        return o;
    }

    private static string StatusName(JobStatus status) => status switch
    {
        JobStatus.Queued => "queued",
        JobStatus.Running => "running",
        JobStatus.Succeeded => "succeeded",
        JobStatus.Failed => "failed",
        JobStatus.Interrupted => "interrupted",
        _ => "cancelled",
    };

    private static IResult Problem(int status, string detail) => Results.Problem(detail: detail, statusCode: status);

    /// <summary>Reads a JSON object body of at most <paramref name="limit"/> bytes.</summary>
    private static async Task<JsonObject> ReadBodyAsync(HttpContext context, long limit)
    {
        // application/json only: a cross-site HTML form (text/plain, form encodings) cannot start a job
        if (!context.Request.HasJsonContentType())
            throw new ApiInputException("The request body must be sent as Content-Type: application/json.", 415);
        if (context.Request.ContentLength > limit)
            throw new ApiInputException($"The request body is larger than the {ByteSize.Format(limit)} limit (Studio:MaxJsonBodyBytes).", 413);
        using var buffer = new MemoryStream();
        var chunk = new byte[8192];
        int read;
        while ((read = await context.Request.Body.ReadAsync(chunk, context.RequestAborted)) > 0)
        {
            if (buffer.Length + read > limit)
                throw new ApiInputException($"The request body is larger than the {ByteSize.Format(limit)} limit (Studio:MaxJsonBodyBytes).", 413);
            buffer.Write(chunk, 0, read);
        }
        try
        {
            return JsonNode.Parse(buffer.ToArray(), documentOptions: new JsonDocumentOptions { MaxDepth = 16, AllowDuplicateProperties = false }) as JsonObject
                ?? throw new ApiInputException("The request body must be a JSON object.");
        }
        catch (JsonException e)
        {
            throw new ApiInputException($"The request body is not valid JSON ({DiffusionPrune.Formats.Messages.OneLine(e.Message)}).");
        }
    }

    /// <summary>Typed access to a request's fields that remembers which were read, so unknown ones are refused.</summary>
    private sealed class Fields(JsonObject body)
    {
        private readonly HashSet<string> _read = new(StringComparer.Ordinal) { "kind" };

        public void RejectUnknown()
        {
            var unknown = body.Select(p => p.Key).Where(k => !_read.Contains(k)).ToList();
            if (unknown.Count > 0) throw new ApiInputException($"Unknown field(s): {string.Join(", ", unknown.Select(k => $"'{k}'"))}.");
        }

        private JsonNode? Get(string key)
        {
            _read.Add(key);
            return body.TryGetPropertyValue(key, out var node) ? node : null;
        }

        public string String(string key) => Get(key) is JsonValue v && v.TryGetValue<string>(out var s) && s.Length > 0
            ? s : throw new ApiInputException($"'{key}' is required and must be a non-empty string.");

        public IReadOnlyList<string> Strings(string key) =>
            Get(key) is JsonArray array && array.All(n => n is JsonValue v && v.TryGetValue<string>(out var s) && s.Length > 0)
                ? array.Select(n => n!.GetValue<string>()).ToList()
                : throw new ApiInputException($"'{key}' is required and must be a list of names.");

        public IReadOnlyList<string>? OptionalTexts(string key) => Get(key) switch
        {
            null => null,
            JsonArray { Count: > 0 } array when array.All(n => n is JsonValue v && v.TryGetValue<string>(out var s) && !string.IsNullOrWhiteSpace(s))
                => array.Select(n => n!.GetValue<string>().Trim()).ToList(),
            _ => throw new ApiInputException($"'{key}' must be a non-empty list of non-empty strings."),
        };

        public IReadOnlyList<double> Doubles(string key) =>
            Get(key) is JsonArray array && array.All(n => n is JsonValue v && v.TryGetValue<double>(out var d) && double.IsFinite(d))
                ? array.Select(n => n!.GetValue<double>()).ToList()
                : throw new ApiInputException($"'{key}' is required and must be a list of numbers.");

        public IReadOnlyList<int>? OptionalInts(string key, int least, int most) => Get(key) switch
        {
            null => null,
            JsonArray { Count: > 0 } array when array.All(n => n is JsonValue v && v.TryGetValue<double>(out var d) && d == Math.Floor(d) && d >= least && d <= most)
                => array.Select(n => (int)n!.GetValue<double>()).ToList(),
            _ => throw new ApiInputException($"'{key}' must be a list of whole numbers from {least} to {most}."),
        };

        public string? OptionalString(string key) => Get(key) switch
        {
            null => null,
            JsonValue v when v.TryGetValue<string>(out var s) && s.Length > 0 => s,
            _ => throw new ApiInputException($"'{key}' must be a non-empty string."),
        };

        public double Double(string key) => OptionalDouble(key) ?? throw new ApiInputException($"'{key}' is required and must be a number.");

        public double? OptionalDouble(string key) => Get(key) switch
        {
            null => null,
            JsonValue v when v.TryGetValue<double>(out var d) && double.IsFinite(d) => d,
            _ => throw new ApiInputException($"'{key}' must be a number."),
        };

        public long? OptionalLong(string key) => OptionalDouble(key) is double d
            ? (d == Math.Floor(d) && Math.Abs(d) <= 9e15 ? (long)d : throw new ApiInputException($"'{key}' must be a whole number."))
            : null;

        public int? OptionalInt(string key, int least) => OptionalLong(key) is long n
            ? (n >= least && n <= 1_000_000 ? (int)n : throw new ApiInputException($"'{key}' must be between {least} and 1,000,000, not {n}."))
            : null;

        public bool? OptionalBool(string key) => Get(key) switch
        {
            null => null,
            JsonValue v when v.TryGetValue<bool>(out var b) => b,
            _ => throw new ApiInputException($"'{key}' must be true or false."),
        };

        public T? OptionalEnum<T>(string key) where T : struct, Enum => Get(key) switch
        {
            null => null,
            // one name exactly (any case): not a number, and not Enum.TryParse's comma list of flags
            JsonValue v when v.TryGetValue<string>(out var s) && Enum.GetNames<T>().FirstOrDefault(n => n.Equals(s, StringComparison.OrdinalIgnoreCase)) is { } name
                => Enum.Parse<T>(name),
            _ => throw new ApiInputException($"'{key}' must be one of {string.Join(", ", Enum.GetNames<T>().Select(n => n.ToLowerInvariant()))}."),
        };
    }

    private sealed class ApiInputException(string message, int statusCode = 400) : Exception(message)
    {
        public int StatusCode { get; } = statusCode;
    }
}
