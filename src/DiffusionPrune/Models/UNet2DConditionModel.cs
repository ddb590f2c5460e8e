using DiffusionPrune.Formats;
using DiffusionPrune.Models.Layers;
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>
/// diffusers' <c>UNet2DConditionModel</c>, the denoiser of Stable Diffusion 1.x / 2.x / XL, in TorchSharp: (noisy latents,
/// timestep, text-encoder states[, SDXL's text_embeds and time_ids]) -> noise prediction. Field names are the state-dict
/// keys, so a pipeline's <c>unet/diffusion_pytorch_model.safetensors</c> loads one to one (<see cref="Load"/>).
/// Blocks without text (DownBlock2D, UpBlock2D, a UNetMidBlock2D mid block) are <see cref="UNet2DModel"/>'s own.
/// </summary>
public sealed class UNet2DConditionModel : DiffusionModel
{
    /// <summary>The keys <c>added_cond_kwargs</c> must hold for addition_embed_type "text_time" (Stable Diffusion XL).</summary>
    public const string TextEmbedsKey = "text_embeds", TimeIdsKey = "time_ids";

    private readonly Conv2d conv_in;
    private readonly TimestepEmbedding time_embedding;
    private readonly nn.Module<Tensor, Tensor>? class_embedding;
    private readonly TimestepEmbedding? add_embedding;
    private readonly ModuleList<nn.Module> down_blocks;
    private readonly nn.Module? mid_block;
    private readonly ModuleList<nn.Module> up_blocks;
    private readonly GroupNorm conv_norm_out;
    private readonly Conv2d conv_out;

    public UNet2DConditionConfig Config { get; }

    public UNet2DConditionModel(UNet2DConditionConfig config) : base(nameof(UNet2DConditionModel))
    {
        config.Validate();
        Config = config;
        var c = config;
        int[] channels = c.BlockOutChannels;
        int n = channels.Length;
        int timeEmbedDim = c.TimeEmbedDim;

        // 1. input and time: positional features of block_out_channels[0] -> MLP (act_fn; timestep_post_act after it)
        conv_in = nn.Conv2d(c.InChannels, channels[0], c.ConvInKernel, padding: (c.ConvInKernel - 1) / 2);
        time_embedding = new TimestepEmbedding(channels[0], timeEmbedDim, c.ActFn, c.TimestepPostAct);

        // class embedding, summed with (or concatenated to) the time embedding. diffusers builds "projection" with its
        // TimestepEmbedding's default SiLU whatever act_fn says, and "timestep" with act_fn.
        if (c.ClassEmbedType is null && c.NumClassEmbeds is int numClasses)
            class_embedding = nn.Embedding(numClasses, timeEmbedDim);
        else if (c.ClassEmbedType == "timestep")
            class_embedding = new TimestepEmbedding(channels[0], timeEmbedDim, c.ActFn);
        else if (c.ClassEmbedType == "identity")
            class_embedding = nn.Identity();
        else if (c.ClassEmbedType == "projection")
            class_embedding = new TimestepEmbedding(c.ProjectionClassEmbeddingsInputDim!.Value, timeEmbedDim);

        // SDXL: [text_embeds, sinusoidal features of each time id] -> MLP (SiLU), added to the time embedding
        if (c.AdditionEmbedType == "text_time")
            add_embedding = new TimestepEmbedding(c.ProjectionClassEmbeddingsInputDim!.Value, timeEmbedDim);

        UNetBlockSettings Settings(string path, int outputChannel) => new(c.BlocksTimeEmbedDim, c.NormEps, c.ActFn, c.NormNumGroups,
            c.ResnetTimeScaleShift, c.Dropout, outputChannel, c.Structure, path);
        CrossAttentionSettings Attention(int heads, int crossAttentionDim, int layers, bool onlyCrossAttention) =>
            new(heads, crossAttentionDim, layers, c.UseLinearProjection, onlyCrossAttention, c.Dropout);

        // 3. down
        down_blocks = new ModuleList<nn.Module>();
        int outputChannel = channels[0];
        for (int i = 0; i < n; i++)
        {
            int inputChannel = outputChannel;
            outputChannel = channels[i];
            bool isFinal = i == n - 1;
            var s = Settings($"down_blocks.{i}", outputChannel);
            down_blocks.Add(c.DownBlockTypes[i] == UNet2DConditionConfig.CrossAttnDownBlock
                ? new CrossAttnDownBlock2D(s, Attention(c.NumAttentionHeads(i), c.CrossAttentionDim[i], c.TransformerLayersPerBlock[i], c.OnlyCrossAttention[i]),
                    c.LayersPerBlock[i], inputChannel, outputChannel, !isFinal, c.DownsamplePadding)
                : new DownBlock2D(s, c.LayersPerBlock[i], inputChannel, outputChannel, withAttention: false, isFinal ? null : "conv", c.DownsamplePadding));
        }

        // 4. mid: UNetMidBlock2DCrossAttn takes the last entries and ignores only_cross_attention, as in diffusers
        if (c.MidBlockType == UNet2DConditionConfig.CrossAttnMidBlock)
            mid_block = new UNetMidBlock2DCrossAttn(Settings("mid_block", channels[^1]),
                Attention(c.NumAttentionHeads(n - 1), c.CrossAttentionDim[^1], c.TransformerLayersPerBlock[^1], onlyCrossAttention: false),
                channels[^1], c.MidBlockScaleFactor);
        else if (c.MidBlockType == UNet2DConditionConfig.ResnetMidBlock)
            mid_block = new UNetMidBlock2D(Settings("mid_block", channels[^1]), channels[^1], c.MidBlockScaleFactor, attnGroups: null,
                addAttention: false, numLayers: 0);

        // 5. up: every per-block list reversed; one more ResNet per block than down, the extra one eating the block's input skip
        up_blocks = new ModuleList<nn.Module>();
        var reversed = channels.Reverse().ToArray();
        outputChannel = reversed[0];
        for (int i = 0; i < n; i++)
        {
            int r = n - 1 - i; // the down block at this resolution, whose per-block settings the up block takes
            int prevOutputChannel = outputChannel;
            outputChannel = reversed[i];
            int inputChannel = reversed[Math.Min(i + 1, n - 1)];
            bool isFinal = i == n - 1;
            var s = Settings($"up_blocks.{i}", outputChannel);
            up_blocks.Add(c.UpBlockTypes[i] == UNet2DConditionConfig.CrossAttnUpBlock
                ? new CrossAttnUpBlock2D(s, Attention(c.NumAttentionHeads(r), c.CrossAttentionDim[r], c.TransformerLayersPerBlock[r], c.OnlyCrossAttention[r]),
                    c.LayersPerBlock[r] + 1, inputChannel, prevOutputChannel, outputChannel, !isFinal)
                : new UpBlock2D(s, c.LayersPerBlock[r] + 1, inputChannel, prevOutputChannel, outputChannel, withAttention: false, isFinal ? null : "conv"));
        }

        // 6. out
        conv_norm_out = LayerFactory.GroupNorm(c.NormNumGroups, channels[0], c.NormEps);
        conv_out = nn.Conv2d(channels[0], c.OutChannels, c.ConvOutKernel, padding: (c.ConvOutKernel - 1) / 2);
        RegisterComponents();
    }

    public override string ClassName => UNet2DConditionConfig.ClassName;
    public override int InChannels => Config.InChannels;
    public override int OutChannels => Config.OutChannels;

    /// <summary>The latent size of the config; a config without sample_size (diffusers allows it) cannot say, so asking throws.</summary>
    public override int[] SampleSize => Config.SampleSize
        ?? throw new InvalidOperationException("This UNet2DConditionModel's config has no sample_size; give the latent height and width explicitly.");
    public override int? NumClasses => Config.ClassEmbedType is null ? Config.NumClassEmbeds : null;
    public override ModelStructure Structure => Config.Structure;
    public override JsonObject ConfigToJson() => Config.ToJson();

    public Conv2d ConvIn => conv_in;
    public TimestepEmbedding TimeEmbedding => time_embedding;

    /// <summary>An Embedding (num_class_embeds), a TimestepEmbedding (class_embed_type timestep or projection), an Identity, or null.</summary>
    public nn.Module<Tensor, Tensor>? ClassEmbedding => class_embedding;

    /// <summary>SDXL's text_time MLP, or null.</summary>
    public TimestepEmbedding? AddEmbedding => add_embedding;

    /// <summary><see cref="CrossAttnDownBlock2D"/>s and <see cref="DownBlock2D"/>s.</summary>
    public IList<nn.Module> DownBlocks => down_blocks;

    /// <summary>A <see cref="UNetMidBlock2DCrossAttn"/>, a <see cref="UNetMidBlock2D"/> (ResNet only), or null.</summary>
    public nn.Module? MidBlock => mid_block;

    /// <summary><see cref="CrossAttnUpBlock2D"/>s and <see cref="UpBlock2D"/>s.</summary>
    public IList<nn.Module> UpBlocks => up_blocks;
    public GroupNorm ConvNormOut => conv_norm_out;
    public Conv2d ConvOut => conv_out;

    /// <summary>How many times the down path halves the latents: sample sides must be multiples of 2^this.</summary>
    public int NumUpsamplers => Config.BlockOutChannels.Length - 1;

    /// <summary>
    /// sample [B, in_channels, H, W], conditioned on <see cref="Conditioning.Timestep"/>, <see cref="Conditioning.EncoderHiddenStates"/>
    /// [B, T, cross_attention_dim] (required), optionally <see cref="Conditioning.EncoderAttentionMask"/> [B, T] (1 keep, 0 drop),
    /// <see cref="Conditioning.ClassLabels"/> when the config has a class embedding, and for addition_embed_type "text_time"
    /// <see cref="Conditioning.AddedConditions"/> with <c>text_embeds</c> [B, D] and <c>time_ids</c> [B, K] (K * addition_time_embed_dim
    /// + D = projection_class_embeddings_input_dim) -> [B, out_channels, H, W].
    /// </summary>
    public override Tensor Forward(Tensor sample, Conditioning conditioning)
    {
        conditioning.RejectUnused(ClassName, classLabels: class_embedding is not null, encoderHiddenStates: true, addedConditions: add_embedding is not null);
        var c = Config;
        var encoderHiddenStates = CheckInputs(sample, conditioning);

        // 0. the cross-attention mask becomes a score bias with a singleton query axis: [B, T] -> [B, 1, T], keep 0, drop -10000
        Tensor? encoderAttentionBias = null;
        if (conditioning.EncoderAttentionMask is { } mask)
            encoderAttentionBias = ((1 - mask.to_type(sample.dtype)) * -10000.0).unsqueeze(1);

        if (c.CenterInputSample)
            sample = sample * 2 - 1.0;

        // 1. time: [B] -> [B, block_out_channels[0]] sinusoidal features -> [B, time_embed_dim]
        var timesteps = BatchTimesteps(conditioning.Timestep, sample.shape[0], sample.device);
        var emb = time_embedding.call(TimeFeatures(timesteps));

        if (class_embedding is not null)
        {
            var classLabels = conditioning.ClassLabels
                ?? throw new ArgumentException("This UNet2DConditionModel has a class embedding: class_labels are required.");
            var classEmb = class_embedding.call(c.ClassEmbedType == "timestep" ? TimeFeatures(classLabels) : classLabels);
            emb = c.ClassEmbeddingsConcat ? cat([emb, classEmb], -1) : emb + classEmb;
        }

        if (add_embedding is not null)
            emb = emb + add_embedding.call(TextTimeInput(conditioning.AddedConditions, sample.shape[0]));

        if (c.TimeEmbeddingActFn is not null)
            emb = Activations.Apply(c.TimeEmbeddingActFn, emb);

        // 2. pre-process: [B, in, H, W] -> [B, C0, H, W]
        sample = conv_in.call(sample);

        // 3. down: every layer's output (and every downsampled map) is kept for the up path
        var downBlockResSamples = new List<Tensor> { sample };
        for (int i = 0; i < down_blocks.Count; i++)
        {
            sample = down_blocks[i] switch
            {
                CrossAttnDownBlock2D cross => cross.Forward(sample, emb, encoderHiddenStates, encoderAttentionBias, downBlockResSamples),
                DownBlock2D plain => plain.Forward(sample, emb, downBlockResSamples),
                var other => throw new InvalidOperationException($"Unexpected down block {other.GetName()}."),
            };
            sample = Tap($"down_blocks.{i}", sample);
        }

        // 4. mid
        if (mid_block is not null)
        {
            sample = mid_block switch
            {
                UNetMidBlock2DCrossAttn cross => cross.Forward(sample, emb, encoderHiddenStates, encoderAttentionBias),
                UNetMidBlock2D plain => plain.Forward(sample, emb),
                var other => throw new InvalidOperationException($"Unexpected mid block {other.GetName()}."),
            };
            sample = Tap("mid_block", sample);
        }

        // 5. up
        for (int i = 0; i < up_blocks.Count; i++)
        {
            sample = up_blocks[i] switch
            {
                CrossAttnUpBlock2D cross => cross.Forward(sample, downBlockResSamples, emb, encoderHiddenStates, encoderAttentionBias),
                UpBlock2D plain => plain.Forward(sample, downBlockResSamples, emb),
                var other => throw new InvalidOperationException($"Unexpected up block {other.GetName()}."),
            };
            sample = Tap($"up_blocks.{i}", sample);
        }

        // 6. post-process: [B, C0, H, W] -> [B, out, H, W]
        return conv_out.call(Activations.Apply(c.ActFn, conv_norm_out.call(sample)));
    }

    /// <summary>diffusers' <c>Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)</c>, float32.</summary>
    private Tensor TimeFeatures(Tensor timesteps) =>
        TimestepFeatures.Sinusoidal(timesteps, Config.BlockOutChannels[0], Config.FlipSinToCos, Config.FreqShift);

    /// <summary>Refuses inputs that would fail deep inside a block (or silently broadcast), saying what was expected.</summary>
    private Tensor CheckInputs(Tensor sample, Conditioning conditioning)
    {
        var c = Config;
        if (sample.dim() != 4 || sample.shape[1] != c.InChannels)
            throw new ArgumentException($"UNet2DConditionModel takes a sample of shape [batch, {c.InChannels}, height, width], not [{string.Join(", ", sample.shape)}].");
        long factor = 1L << NumUpsamplers;
        if (sample.shape[2] % factor != 0 || sample.shape[3] % factor != 0)
            throw new ArgumentException($"The sample's height and width ({sample.shape[2]} x {sample.shape[3]}) must be multiples of {factor}: " +
                $"the U-Net halves them {NumUpsamplers} times and must double them back to the same size.");
        var encoderHiddenStates = conditioning.EncoderHiddenStates
            ?? throw new ArgumentException("UNet2DConditionModel needs encoder_hidden_states (the text encoder's [batch, tokens, width] output).");
        var usedWidths = Enumerable.Range(0, c.DownBlockTypes.Length)
            .Where(i => c.DownBlockTypes[i] == UNet2DConditionConfig.CrossAttnDownBlock
                || c.UpBlockTypes[c.DownBlockTypes.Length - 1 - i] == UNet2DConditionConfig.CrossAttnUpBlock
                || (i == c.DownBlockTypes.Length - 1 && c.MidBlockType == UNet2DConditionConfig.CrossAttnMidBlock))
            .Select(i => c.CrossAttentionDim[i]).Distinct().ToList();
        if (encoderHiddenStates.dim() != 3 || encoderHiddenStates.shape[0] != sample.shape[0] || usedWidths.Any(w => w != encoderHiddenStates.shape[2]))
            throw new ArgumentException($"encoder_hidden_states must be [{sample.shape[0]}, tokens, {string.Join(" / ", usedWidths)}] (batch, tokens, " +
                $"cross_attention_dim), not [{string.Join(", ", encoderHiddenStates.shape)}].");
        if (conditioning.EncoderAttentionMask is { } mask && (mask.dim() != 2 || mask.shape[0] != sample.shape[0] || mask.shape[1] != encoderHiddenStates.shape[1]))
            throw new ArgumentException($"encoder_attention_mask must be [{sample.shape[0]}, {encoderHiddenStates.shape[1]}] (batch, tokens), " +
                $"not [{string.Join(", ", mask.shape)}].");
        return encoderHiddenStates;
    }

    /// <summary>
    /// SDXL's add_embedding input: text_embeds [B, D] followed by the sinusoidal features (addition_time_embed_dim each,
    /// flip_sin_to_cos and freq_shift as the timestep's) of every time id, [B, K * addition_time_embed_dim].
    /// </summary>
    private Tensor TextTimeInput(IReadOnlyDictionary<string, Tensor>? added, long batch)
    {
        var c = Config;
        string needs = $"addition_embed_type 'text_time' (Stable Diffusion XL) needs added conditions '{TextEmbedsKey}' [batch, width] and " +
            $"'{TimeIdsKey}' [batch, ids] with width + ids x {c.AdditionTimeEmbedDim} = {c.ProjectionClassEmbeddingsInputDim}";
        if (added is null || !added.TryGetValue(TextEmbedsKey, out var textEmbeds) || !added.TryGetValue(TimeIdsKey, out var timeIds))
            throw new ArgumentException($"{needs}; got {(added is null || added.Count == 0 ? "none" : string.Join(", ", added.Keys))}.");
        var unknown = added.Keys.Where(k => k is not (TextEmbedsKey or TimeIdsKey)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"{needs}; '{string.Join("', '", unknown)}' is not used by this model.");
        if (textEmbeds.dim() != 2 || timeIds.dim() != 2 || textEmbeds.shape[0] != batch || timeIds.shape[0] != batch
            || textEmbeds.shape[1] + timeIds.shape[1] * c.AdditionTimeEmbedDim!.Value != c.ProjectionClassEmbeddingsInputDim)
            throw new ArgumentException($"{needs}; got {TextEmbedsKey} [{string.Join(", ", textEmbeds.shape)}] and {TimeIdsKey} " +
                $"[{string.Join(", ", timeIds.shape)}] for a batch of {batch}.");
        var timeEmbeds = TimestepFeatures.Sinusoidal(timeIds.flatten(), c.AdditionTimeEmbedDim!.Value, c.FlipSinToCos, c.FreqShift)
            .reshape(batch, -1);
        return cat([textEmbeds.to_type(timeEmbeds.dtype), timeEmbeds], -1);
    }

    /// <summary>
    /// Loads a diffusers unet folder (config.json + diffusion_pytorch_model.safetensors, or its .fp16 / .bf16 variant or a
    /// sharded index, upcast to float32 tensor by tensor), or the <c>unet/</c> subfolder of a pipeline folder. Loading is
    /// strict: a missing, unexpected or mis-shaped tensor is refused by name, so the U-Net never runs with random weights.
    /// </summary>
    public static UNet2DConditionModel Load(string path)
    {
        string folder = ResolveFolder(path);
        var config = UNet2DConditionConfig.FromJson(ConfigJson.Load(Path.Combine(folder, ModelFolder.Config)));
        var model = new UNet2DConditionModel(config);
        try
        {
            using var weights = DiffusersModelLoader.OpenWeights(folder);
            DiffusersModelLoader.LoadStrict(model, weights, folder);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        return model;
    }

    /// <summary>The folder itself, or a pipeline's unet/ (twin of AutoencoderKL's vae/ lookup).</summary>
    private static string ResolveFolder(string path)
    {
        if (File.Exists(path) && Path.GetFileName(path) == ModelFolder.Config)
            path = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(path))
            throw new DirectoryNotFoundException($"No U-Net folder at '{path}'. Give a diffusers unet folder (config.json + {ModelFolder.Weights}) or a Stable Diffusion pipeline folder.");
        if (!File.Exists(Path.Combine(path, ModelFolder.Config)) && File.Exists(Path.Combine(path, ModelFolder.PipelineIndex)))
        {
            string sub = Path.Combine(path, "unet");
            if (!File.Exists(Path.Combine(sub, ModelFolder.Config)))
                throw new ModelFormatException($"'{path}' is a pipeline (model_index.json) but has no unet/ subfolder with a config.json.");
            return sub;
        }
        if (!File.Exists(Path.Combine(path, ModelFolder.Config)))
            throw new ModelFormatException($"'{path}' has no config.json (nor model_index.json). Give a diffusers unet folder.");
        return path;
    }
}
