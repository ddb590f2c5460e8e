using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using DiffusionPrune.Data;
using DiffusionPrune.Formats;
using DiffusionPrune.Models;
using DiffusionPrune.Runtime;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Training;

/// <summary>Training settings; every random draw derives from <see cref="Seed"/> and the step number.</summary>
public sealed record TrainOptions
{
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 64;
    public double LearningRate { get; init; } = 5e-4;
    public int WarmupSteps { get; init; } = 200;
    /// <summary>The learning rate decays by a cosine to this fraction of its peak at the last step.</summary>
    public double FinalLearningRateFraction { get; init; } = 0.1;
    public double EmaDecay { get; init; } = 0.999;
    public double GradClip { get; init; } = 1.0;
    public double WeightDecay { get; init; } = 0.0;
    /// <summary>Probability of replacing a label by the null class (classifier-free guidance training).</summary>
    public double ClassDropout { get; init; } = 0.1;
    public long Seed { get; init; } = 0;
    public int CheckpointEvery { get; init; } = 250;

    /// <summary>Distil from a teacher (the loss gains output and feature terms); null trains on the task loss alone.</summary>
    public DistillationOptions? Distillation { get; init; }

    public double LearningRateAt(int step)
    {
        if (step < WarmupSteps) return LearningRate * (step + 1) / WarmupSteps;
        double progress = Steps <= WarmupSteps ? 1 : (step - WarmupSteps) / (double)(Steps - WarmupSteps);
        double cosine = 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1, progress)));
        return LearningRate * (FinalLearningRateFraction + (1 - FinalLearningRateFraction) * cosine);
    }
}

/// <summary>Knowledge distillation's form (LAPTOP-Diff, Zhang et al. 2024: normalized feature KD).</summary>
public enum KnowledgeDistillation
{
    /// <summary>The task loss alone: plain fine-tuning of the student, the baseline.</summary>
    None,

    /// <summary>Output and feature terms as mean squared errors (BK-SDM): a large-magnitude layer dominates.</summary>
    Plain,

    /// <summary>Output term, and each feature term divided by the teacher feature's squared norm (LAPTOP-Diff).</summary>
    Normalized,
}

/// <summary>
/// L = w_task·L_task + w_out·‖ε_s − ε_t‖² + w_feat·Σ_l d(F_s^l, F_t^l), with d the mean squared error (plain) or
/// ‖F_s^l − F_t^l‖² / ‖F_t^l‖² (normalized), over the blocks' outputs matched by name (<see cref="DiffusionModel.FeatureTap"/>).
/// </summary>
public sealed record DistillationOptions
{
    public required DiffusionModel Teacher { get; init; }

    /// <summary>The teacher's name and hash for the recipe (<see cref="SourceIdentity.Describe"/>), never a local path.</summary>
    public required string TeacherName { get; init; }

    public KnowledgeDistillation Kd { get; init; } = KnowledgeDistillation.Normalized;
    public double TaskWeight { get; init; } = 1.0;
    public double OutputWeight { get; init; } = 1.0;
    public double FeatureWeight { get; init; } = 1.0;

    /// <summary>Images the teacher was trained on (its training_args.json), to state the compute spent as a fraction; null when unknown.</summary>
    public long? TeacherImagesSeen { get; init; }

    /// <summary>Where the images came from when not a dataset (a pipeline's data-free distillation: its prompts and teacher samples), for the recipe.</summary>
    public JsonObject? DataFree { get; init; }

    public JsonObject ToJson(long imagesSeen)
    {
        var json = Recipe(imagesSeen);
        if (DataFree is not null) json["data_free"] = DataFree.DeepClone();
        return json;
    }

    private JsonObject Recipe(long imagesSeen) => new()
    {
        ["kd"] = Kd.ToString().ToLowerInvariant(),
        ["teacher"] = TeacherName,
        ["task_weight"] = TaskWeight,
        ["output_weight"] = Kd == KnowledgeDistillation.None ? 0 : OutputWeight,
        ["feature_weight"] = Kd == KnowledgeDistillation.None ? 0 : FeatureWeight,
        ["images_seen"] = imagesSeen,
        ["teacher_images_seen"] = TeacherImagesSeen,
        ["fraction_of_teacher_images"] = TeacherImagesSeen is long t && t > 0 ? Math.Round(imagesSeen / (double)t, 6) : null,
    };
}

/// <summary>What the trainer reports after each step; <see cref="Terms"/> names the loss's parts (task, output, feature) when distilling.</summary>
public sealed record TrainProgress(int Step, int TotalSteps, double Loss, double ImagesPerSecond, TimeSpan Eta, long? ResidentBytes,
    IReadOnlyDictionary<string, double>? Terms = null);

public sealed record TrainResult(int Steps, double FinalLoss, TimeSpan WallTime, string OutputFolder);

/// <summary>
/// Trains a denoiser with the DDPM epsilon objective: AdamW with warm-up and cosine decay, EMA weights,
/// global gradient clipping, class dropout for classifier-free guidance. Checkpoints (weights, EMA,
/// optimizer moments, step) are written atomically every K steps; <c>resume</c> continues from the last
/// one and produces exactly the run an uninterrupted training would have produced.
/// </summary>
public sealed class DiffusionTrainer
{
    public const string CheckpointFolder = "checkpoint";

    /// <summary>The scheduler config a trained model ships with (<see cref="ModelFolder.DefaultSchedulerJson"/>).</summary>
    public static string SchedulerJsonFor(DiffusionModel model) => ModelFolder.DefaultSchedulerJson(classConditional: model.NumClasses is not null);

    private readonly DiffusionModel _model;
    private readonly IImageDataset _data;
    private readonly TrainOptions _options;
    private readonly string _output;

    /// <summary>
    /// The released model's scheduler_config.json when it keeps one of its own (a distilled student keeps its
    /// teacher's); null writes the project's default schedule, as for a model trained from scratch.
    /// </summary>
    public string? SchedulerJson { get; init; }

    /// <summary>
    /// For a text-conditioned model (a Stable Diffusion U-Net): the encoder states [P + 1, tokens, D] of the prompts the
    /// data's labels index, the last row the empty prompt's. Each step a label drops to the empty prompt with probability
    /// <see cref="TrainOptions.ClassDropout"/>, as Stable Diffusion is trained, so the unconditional branch that
    /// classifier-free guidance subtracts is trained too. Borrowed: the caller disposes it. Null for other models.
    /// </summary>
    public Tensor? TextStates { get; init; }

    /// <summary>
    /// Where in the output the released model's config and weights go: null, the output itself (with the scheduler config
    /// beside them); "unet" for a pipeline's denoiser, without a scheduler config (the pipeline's scheduler/ holds it).
    /// </summary>
    public string? ModelSubfolder { get; init; }

    public DiffusionTrainer(DiffusionModel model, IImageDataset data, TrainOptions options, string outputFolder)
    {
        ImageDatasets.RequireShape(data, model.InChannels, model.SampleSize[0], model.SampleSize[^1]);
        ImageDatasets.RequireLabelsFor(data, model.NumClasses);
        if (options.Steps < 1) throw new ArgumentException("--steps must be at least 1.");
        if (options.BatchSize < 1) throw new ArgumentException("--batch must be at least 1.");
        _model = model;
        _data = data;
        _options = options;
        _output = outputFolder;
    }

    public TrainResult Train(bool resume, Action<TrainProgress>? progress = null, CancellationToken cancellation = default)
    {
        var o = _options;
        Directory.CreateDirectory(_output);
        // The noise levels the model samples with: its own scheduler config when it keeps one (a distilled student), else the default.
        var schedulerConfig = SchedulerConfig.Parse(SchedulerJson ?? ModelFolder.DefaultSchedule, SchedulerJson is null ? "default DDPM schedule" : "the model's scheduler config");
        if (schedulerConfig.PredictionType != "epsilon")
            throw new ArgumentException($"Training and distillation fit the epsilon prediction; this model's scheduler config predicts '{schedulerConfig.PredictionType}'.");
        using var betas = NoiseSchedule.Betas(schedulerConfig);
        using var alphasCumprod = NoiseSchedule.AlphasCumprod(betas);
        int numTrainTimesteps = (int)alphasCumprod.shape[0];

        Runtime.NumericsGuard.RequireHealthy();
        _model.train();
        var named = _model.named_parameters().ToList();
        using var optimizer = new AdamW(named) { WeightDecay = o.WeightDecay };
        var ema = named.ToDictionary(p => p.name, p => p.parameter.detach().clone().DetachFromDisposeScope(), StringComparer.Ordinal);

        int startStep = 0;
        string checkpoint = Path.Combine(_output, CheckpointFolder);
        if (resume)
        {
            if (!File.Exists(Path.Combine(checkpoint, "state.json")))
                throw new FileNotFoundException($"--resume was given but '{checkpoint}' holds no checkpoint. Start without --resume.");
            startStep = LoadCheckpoint(checkpoint, optimizer, ema);
        }

        var device = named.First().parameter.device;
        var stopwatch = Stopwatch.StartNew();
        double lastLoss = double.NaN;
        IReadOnlyDictionary<string, double>? terms = null;
        int step = startStep;
        for (; step < o.Steps; step++)
        {
            cancellation.ThrowIfCancellationRequested();
            int currentStep = step;
            lastLoss = GcPause.Run(() =>
            {
                using var scope = NewDisposeScope();
                // Every draw of this step comes from a generator seeded by (seed, step): resumable exactly.
                var generator = new Generator((ulong)(o.Seed * 1_000_003L + currentStep + 1), device);
                var indices = randint(0, _data.Count, [o.BatchSize], ScalarType.Int64, generator: generator).data<long>().Select(i => (int)i).ToArray();
                var images = _data.Images(indices).to(device);
                Tensor? labels = null, encoderStates = null;
                if (TextStates is { } states)
                {
                    long empty = states.shape[0] - 1;
                    var prompts = _data.Labels(indices).to(device);
                    if (o.ClassDropout > 0)
                    {
                        var drop = rand([o.BatchSize], generator: generator, device: device) < o.ClassDropout;
                        prompts = where(drop, full_like(prompts, empty), prompts);
                    }
                    encoderStates = states.to(device).index_select(0, prompts);
                }
                else if (_model.NumClasses is not null)
                {
                    labels = _data.Labels(indices).to(device);
                    if (_model.NullClass is int nullClass && o.ClassDropout > 0)
                    {
                        var drop = rand([o.BatchSize], generator: generator, device: device) < o.ClassDropout;
                        labels = where(drop, full_like(labels, nullClass), labels);
                    }
                }
                var noise = randn(images.shape, generator: generator, device: device);
                var timesteps = randint(0, numTrainTimesteps, [o.BatchSize], ScalarType.Int64, generator: generator, device: device);
                var noisy = NoiseSchedule.AddNoise(alphasCumprod.to(device), images, noise, timesteps);

                optimizer.ZeroGrad();
                var (loss, parts) = Loss(noisy, new Conditioning(timesteps, labels, encoderStates), noise);
                loss.backward();
                // Fail fast: a non-finite loss or gradient would poison the weights and the EMA for good.
                double lossValue = loss.item<float>();
                terms = parts;
                foreach (var (name, value) in parts) Runtime.NonFiniteCheck.Loss(Stage, currentStep + 1, value, $"{name} loss");
                Runtime.NonFiniteCheck.Loss(Stage, currentStep + 1, lossValue);
                Runtime.NonFiniteCheck.Gradients(Stage, currentStep + 1, named.Select(n => (n.name, (Tensor?)n.parameter.grad)));
                optimizer.ClipGradNorm(o.GradClip);
                optimizer.Step(o.LearningRateAt(currentStep));
                UpdateEma(named, ema, currentStep);
                return lossValue;
            });
            NativeMemory.Trim();

            int done = step + 1 - startStep;
            double seconds = stopwatch.Elapsed.TotalSeconds;
            double imagesPerSecond = done * o.BatchSize / Math.Max(seconds, 1e-9);
            var eta = TimeSpan.FromSeconds(seconds / done * (o.Steps - step - 1));
            progress?.Invoke(new TrainProgress(step + 1, o.Steps, lastLoss, imagesPerSecond, eta, NativeMemory.ResidentBytes(), terms));

            if ((step + 1) % o.CheckpointEvery == 0 && step + 1 < o.Steps)
                SaveCheckpoint(checkpoint, step + 1, optimizer, ema);
        }

        // The released model is the EMA of the weights, in diffusers layout.
        var finalModel = WithWeights(ema);
        SaveReleased(finalModel, schedulerConfig, step, lastLoss, stopwatch.Elapsed, startStep);
        SaveCheckpoint(checkpoint, step, optimizer, ema);
        foreach (var t in ema.Values) t.Dispose();
        _model.eval();
        return new TrainResult(step, lastLoss, stopwatch.Elapsed, _output);
    }

    private string Stage => _options.Distillation is null ? "train" : "distill";

    /// <summary>The step's loss and its parts by name (the task loss alone when not distilling).</summary>
    private (Tensor loss, IReadOnlyDictionary<string, double> parts) Loss(Tensor noisy, Conditioning conditioning, Tensor noise)
    {
        var d = _options.Distillation;
        if (d is null || d.Kd == KnowledgeDistillation.None)
        {
            var task = nn.functional.mse_loss(_model.Predict(noisy, conditioning), noise);
            var only = d is null ? task : task * d.TaskWeight;
            return (only, new Dictionary<string, double> { ["task"] = task.item<float>() });
        }
        var studentFeatures = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var teacherFeatures = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        Tensor prediction, target;
        _model.FeatureTap = (name, feature) => studentFeatures[name] = feature;
        try
        {
            prediction = _model.Predict(noisy, conditioning);
        }
        finally
        {
            _model.FeatureTap = null;
        }
        using (no_grad())
        {
            d.Teacher.FeatureTap = (name, feature) => teacherFeatures[name] = feature;
            try
            {
                target = d.Teacher.Predict(noisy, conditioning);
            }
            finally
            {
                d.Teacher.FeatureTap = null;
            }
        }
        var taskLoss = nn.functional.mse_loss(prediction, noise);
        var outputLoss = nn.functional.mse_loss(prediction, target);
        Tensor featureLoss = zeros([], device: prediction.device);
        foreach (var (name, student) in studentFeatures)
        {
            if (!teacherFeatures.TryGetValue(name, out var teacher)) continue; // a block the teacher lacks: nothing to match
            if (!student.shape.SequenceEqual(teacher.shape))
                throw new ArgumentException($"The student's {name} gives [{string.Join(", ", student.shape)}] but the teacher's gives " +
                    $"[{string.Join(", ", teacher.shape)}]; distil a student pruned from this teacher.");
            featureLoss = featureLoss + (d.Kd == KnowledgeDistillation.Normalized
                ? (student - teacher).square().sum() / teacher.square().sum().clamp_min(1e-12)
                : nn.functional.mse_loss(student, teacher));
        }
        var loss = taskLoss * d.TaskWeight + outputLoss * d.OutputWeight + featureLoss * d.FeatureWeight;
        return (loss, new Dictionary<string, double>
        {
            ["task"] = taskLoss.item<float>(),
            ["output"] = outputLoss.item<float>(),
            ["feature"] = featureLoss.item<float>(),
        });
    }

    private void UpdateEma(List<(string name, TorchSharp.Modules.Parameter parameter)> named, Dictionary<string, Tensor> ema, int step)
    {
        // Warm-up of the decay, as in common EMA implementations: early weights are not over-averaged.
        double decay = Math.Min(_options.EmaDecay, (1.0 + step) / (10.0 + step));
        using var noGrad = no_grad();
        foreach (var (name, p) in named)
            ema[name].mul_(decay).add_(p, alpha: 1 - decay);
    }

    private DiffusionModel WithWeights(Dictionary<string, Tensor> weights)
    {
        using var noGrad = no_grad();
        var state = _model.state_dict();
        var backup = state.ToDictionary(kv => kv.Key, kv => kv.Value.clone(), StringComparer.Ordinal);
        foreach (var (name, value) in weights) state[name].copy_(value);
        _restore = backup;
        return _model;
    }

    private Dictionary<string, Tensor>? _restore;

    private void SaveReleased(DiffusionModel model, SchedulerConfig schedulerConfig, int steps, double loss, TimeSpan wall, int startStep)
    {
        // Each file whole (written beside it, then renamed), the config last: a folder with a config.json has its weights.
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["dprune_train_steps"] = steps.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        if (_options.Distillation is { } recipe) metadata["dprune_distilled_from"] = recipe.TeacherName;
        string modelFolder = ModelSubfolder is null ? _output : Path.Combine(_output, ModelSubfolder);
        Directory.CreateDirectory(modelFolder);
        AtomicFile.Replace(Path.Combine(modelFolder, ModelFolder.Weights),
            path => SafetensorsWriter.Write(path, model.state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal), metadata));
        if (ModelSubfolder is null) AtomicFile.Replace(Path.Combine(_output, ModelFolder.SchedulerConfig), SchedulerJson ?? SchedulerJsonFor(model));
        AtomicFile.Replace(Path.Combine(modelFolder, ModelFolder.Config), model.ConfigToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        var args = new JsonObject
        {
            ["steps"] = steps,
            ["batch_size"] = _options.BatchSize,
            ["learning_rate"] = _options.LearningRate,
            ["warmup_steps"] = _options.WarmupSteps,
            ["ema_decay"] = _options.EmaDecay,
            ["grad_clip"] = _options.GradClip,
            ["class_dropout"] = _options.ClassDropout,
            ["seed"] = _options.Seed,
            ["final_loss"] = loss,
            ["wall_seconds_this_run"] = Math.Round(wall.TotalSeconds, 1),
            ["resumed_from_step"] = startStep,
            ["images_seen"] = (long)steps * _options.BatchSize,
        };
        if (_options.Distillation is { } distillation) args["distillation"] = distillation.ToJson((long)steps * _options.BatchSize);
        AtomicFile.Replace(Path.Combine(_output, ModelFolder.TrainingArgs), args.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        // Put the live (non-EMA) weights back so training could continue in this process.
        if (_restore is not null)
        {
            using var noGrad = no_grad();
            var state = _model.state_dict();
            foreach (var (name, value) in _restore) { state[name].copy_(value); value.Dispose(); }
            _restore = null;
        }
    }

    private void SaveCheckpoint(string folder, int step, AdamW optimizer, Dictionary<string, Tensor> ema)
    {
        // Write into a fresh folder, then swap, so a crash mid-write never leaves a half checkpoint.
        string staging = folder + ".new";
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        Directory.CreateDirectory(staging);
        SafetensorsWriter.Write(Path.Combine(staging, "model.safetensors"), _model.state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal));
        SafetensorsWriter.Write(Path.Combine(staging, "ema.safetensors"), ema.OrderBy(kv => kv.Key, StringComparer.Ordinal));
        SafetensorsWriter.Write(Path.Combine(staging, "optimizer.safetensors"), optimizer.StateTensors().OrderBy(kv => kv.Key, StringComparer.Ordinal));
        File.WriteAllText(Path.Combine(staging, "config.json"), _model.ConfigToJson().ToJsonString());
        File.WriteAllText(Path.Combine(staging, "state.json"), new JsonObject
        {
            ["step"] = step, ["total_steps"] = _options.Steps, ["seed"] = _options.Seed,
            ["kd"] = _options.Distillation?.Kd.ToString().ToLowerInvariant(),
        }.ToJsonString());
        string old = folder + ".old";
        if (Directory.Exists(old)) Directory.Delete(old, true);
        if (Directory.Exists(folder)) Directory.Move(folder, old);
        Directory.Move(staging, folder);
        if (Directory.Exists(old)) Directory.Delete(old, true);
    }

    private int LoadCheckpoint(string folder, AdamW optimizer, Dictionary<string, Tensor> ema)
    {
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "state.json")))!.AsObject();
        int step = state["step"]!.GetValue<int>();
        if (state["seed"]!.GetValue<long>() != _options.Seed)
            throw new ArgumentException($"The checkpoint in '{folder}' was trained with seed {state["seed"]}, not {_options.Seed}; resume with the same settings.");
        string? kd = _options.Distillation?.Kd.ToString().ToLowerInvariant();
        if ((state["kd"]?.GetValue<string>()) != kd)
            throw new ArgumentException($"The checkpoint in '{folder}' was made with --kd {state["kd"]?.GetValue<string>() ?? "(no distillation)"}, not {kd ?? "(no distillation)"}; resume with the same settings.");
        var weights = DiffusersModelLoader.ReadSafetensors(Path.Combine(folder, "model.safetensors"));
        DiffusersModelLoader.LoadStrict(_model, weights, folder);
        var emaWeights = DiffusersModelLoader.ReadSafetensors(Path.Combine(folder, "ema.safetensors"));
        using (no_grad())
            foreach (var (name, value) in ema) value.copy_(emaWeights[name]);
        using (var st = SafetensorsFile.Open(Path.Combine(folder, "optimizer.safetensors")))
        {
            var tensors = st.Entries.Keys.ToDictionary(k => k, k => st.Read(k), StringComparer.Ordinal);
            optimizer.LoadState(tensors);
            foreach (var t in tensors.Values) t.Dispose();
        }
        foreach (var t in weights.Values.Concat(emaWeights.Values)) t.Dispose();
        return step;
    }
}
