using DiffusionPrune.Formats;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>
/// diffusers' <c>DownEncoderBlock2D</c>: ResNet blocks without a time embedding, then (except at the last resolution) a
/// stride-2 convolution with padding 0 after diffusers' asymmetric right/bottom pad. Its twin with time embeddings and
/// skip outputs is the U-Net's <see cref="DownBlock2D"/>.
/// </summary>
public sealed class DownEncoderBlock2D : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<ResnetBlock2D> resnets;
    private readonly ModuleList<Downsample2D>? downsamplers;

    public DownEncoderBlock2D(int numLayers, int inChannels, int outChannels, int groups, double eps, string act, bool addDownsample)
        : base(nameof(DownEncoderBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>();
        for (int i = 0; i < numLayers; i++)
            resnets.Add(new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, tembChannels: null, groups, eps, act: act));
        // diffusers' Encoder always passes downsample_padding=0: the pad happens in Downsample2D, on the right and bottom only.
        if (addDownsample)
            downsamplers = new ModuleList<Downsample2D>(new Downsample2D(outChannels, outChannels, padding: 0));
        RegisterComponents();
    }

    public IList<ResnetBlock2D> Resnets => resnets;
    public Downsample2D? Downsampler => downsamplers?[0];

    public override Tensor forward(Tensor hiddenStates)
    {
        foreach (var resnet in resnets)
            hiddenStates = resnet.call(hiddenStates, null);
        return downsamplers is null ? hiddenStates : downsamplers[0].call(hiddenStates);
    }
}

/// <summary>
/// diffusers' <c>UpDecoderBlock2D</c>: ResNet blocks without a time embedding or skip connections, then (except at the
/// last resolution) nearest 2x upsampling and a 3x3 convolution. Its U-Net twin is <see cref="UpBlock2D"/>.
/// </summary>
public sealed class UpDecoderBlock2D : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<ResnetBlock2D> resnets;
    private readonly ModuleList<Upsample2D>? upsamplers;

    public UpDecoderBlock2D(int numLayers, int inChannels, int outChannels, int groups, double eps, string act, bool addUpsample)
        : base(nameof(UpDecoderBlock2D))
    {
        resnets = new ModuleList<ResnetBlock2D>();
        for (int i = 0; i < numLayers; i++)
            resnets.Add(new ResnetBlock2D(i == 0 ? inChannels : outChannels, outChannels, tembChannels: null, groups, eps, act: act));
        if (addUpsample)
            upsamplers = new ModuleList<Upsample2D>(new Upsample2D(outChannels, outChannels));
        RegisterComponents();
    }

    public IList<ResnetBlock2D> Resnets => resnets;
    public Upsample2D? Upsampler => upsamplers?[0];

    public override Tensor forward(Tensor hiddenStates)
    {
        foreach (var resnet in resnets)
            hiddenStates = resnet.call(hiddenStates, null);
        return upsamplers is null ? hiddenStates : upsamplers[0].call(hiddenStates);
    }
}

/// <summary>
/// diffusers' <c>Encoder</c> (vae.py): image [B, in, H, W] to the Gaussian's moments [B, 2 * latent, H / f, W / f]
/// (double_z), f = 2^(resolutions - 1). Every norm uses eps 1e-6, as diffusers hard-codes for the VAE.
/// </summary>
public sealed class VaeEncoder : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv_in;
    private readonly ModuleList<DownEncoderBlock2D> down_blocks;
    private readonly UNetMidBlock2D mid_block;
    private readonly GroupNorm conv_norm_out;
    private readonly Conv2d conv_out;

    public VaeEncoder(AutoencoderKLConfig c) : base(nameof(VaeEncoder))
    {
        int[] channels = c.BlockOutChannels;
        conv_in = nn.Conv2d(c.InChannels, channels[0], 3, stride: 1, padding: 1);

        down_blocks = new ModuleList<DownEncoderBlock2D>();
        int outputChannel = channels[0];
        for (int i = 0; i < channels.Length; i++)
        {
            int inputChannel = outputChannel;
            outputChannel = channels[i];
            bool isFinal = i == channels.Length - 1;
            down_blocks.Add(new DownEncoderBlock2D(c.LayersPerBlock, inputChannel, outputChannel, c.NormNumGroups, AutoencoderKL.NormEps, c.ActFn, !isFinal));
        }

        mid_block = AutoencoderKL.MidBlock(c, "encoder.mid_block");
        conv_norm_out = LayerFactory.GroupNorm(c.NormNumGroups, channels[^1], AutoencoderKL.NormEps);
        conv_out = nn.Conv2d(channels[^1], 2 * c.LatentChannels, 3, padding: 1);
        RegisterComponents();
    }

    public IList<DownEncoderBlock2D> DownBlocks => down_blocks;
    public UNetMidBlock2D MidBlock => mid_block;

    public override Tensor forward(Tensor sample)
    {
        // 1. pre-process: [B, in, H, W] -> [B, C0, H, W]
        sample = conv_in.call(sample);
        // 2. down: each block but the last halves H and W
        foreach (var block in down_blocks)
            sample = block.call(sample);
        // 3. mid: ResNet, single-head attention, ResNet, no time embedding
        sample = mid_block.Forward(sample, null);
        // 4. post-process: [B, C_last, h, w] -> [B, 2 * latent, h, w]; diffusers' conv_act is SiLU whatever act_fn says
        return conv_out.call(nn.functional.silu(conv_norm_out.call(sample)));
    }
}

/// <summary>
/// diffusers' <c>Decoder</c> (vae.py, norm_type "group"): latent [B, latent, h, w] to image [B, out, h * f, w * f].
/// Up blocks have layers_per_block + 1 ResNet blocks; every norm uses eps 1e-6.
/// </summary>
public sealed class VaeDecoder : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv_in;
    private readonly UNetMidBlock2D mid_block;
    private readonly ModuleList<UpDecoderBlock2D> up_blocks;
    private readonly GroupNorm conv_norm_out;
    private readonly Conv2d conv_out;

    public VaeDecoder(AutoencoderKLConfig c) : base(nameof(VaeDecoder))
    {
        int[] channels = c.BlockOutChannels;
        conv_in = nn.Conv2d(c.LatentChannels, channels[^1], 3, stride: 1, padding: 1);
        mid_block = AutoencoderKL.MidBlock(c, "decoder.mid_block");

        up_blocks = new ModuleList<UpDecoderBlock2D>();
        var reversed = channels.Reverse().ToArray();
        int outputChannel = reversed[0];
        for (int i = 0; i < reversed.Length; i++)
        {
            int prevOutputChannel = outputChannel;
            outputChannel = reversed[i];
            bool isFinal = i == channels.Length - 1;
            up_blocks.Add(new UpDecoderBlock2D(c.LayersPerBlock + 1, prevOutputChannel, outputChannel, c.NormNumGroups, AutoencoderKL.NormEps, c.ActFn, !isFinal));
        }

        conv_norm_out = LayerFactory.GroupNorm(c.NormNumGroups, channels[0], AutoencoderKL.NormEps);
        conv_out = nn.Conv2d(channels[0], c.OutChannels, 3, padding: 1);
        RegisterComponents();
    }

    public Conv2d ConvIn => conv_in;
    public UNetMidBlock2D MidBlock => mid_block;
    public IList<UpDecoderBlock2D> UpBlocks => up_blocks;
    public GroupNorm ConvNormOut => conv_norm_out;
    public Conv2d ConvOut => conv_out;

    public override Tensor forward(Tensor sample)
    {
        // 1. pre-process: [B, latent, h, w] -> [B, C_last, h, w]
        sample = conv_in.call(sample);
        // 2. mid
        sample = mid_block.Forward(sample, null);
        // 3. up: each block but the last doubles H and W
        foreach (var block in up_blocks)
            sample = block.call(sample);
        // 4. post-process: [B, C0, H, W] -> [B, out, H, W]
        return conv_out.call(nn.functional.silu(conv_norm_out.call(sample)));
    }
}

/// <summary>
/// diffusers' <c>AutoencoderKL</c>, the VAE of Stable Diffusion: <see cref="Encode"/> maps an image in [-1, 1] to the
/// mean and log-variance of a diagonal Gaussian over latents, <see cref="Decode"/> maps latents back to an image.
/// Fields are named as diffusers' state dict (<c>encoder.down_blocks.0.resnets.0.conv1.weight</c>), so a <c>vae/</c>
/// folder loads without a key table. Scaling latents by <see cref="ScalingFactor"/> is the pipeline's job, as in diffusers.
/// </summary>
public sealed class AutoencoderKL : nn.Module
{
    /// <summary>diffusers hard-codes eps 1e-6 for every GroupNorm of the VAE (resnet_eps, conv_norm_out), whatever the config.</summary>
    internal const double NormEps = 1e-6;

    /// <summary>diffusers' DiagonalGaussianDistribution clamps the log-variance to this range before using it.</summary>
    public const double MinLogvar = -30.0, MaxLogvar = 20.0;

    private readonly VaeEncoder encoder;
    private readonly VaeDecoder decoder;
    private readonly Conv2d? quant_conv;
    private readonly Conv2d? post_quant_conv;

    public AutoencoderKLConfig Config { get; }

    public AutoencoderKL(AutoencoderKLConfig config) : base(nameof(AutoencoderKL))
    {
        config.Validate();
        Config = config;
        encoder = new VaeEncoder(config);
        decoder = new VaeDecoder(config);
        if (config.UseQuantConv)
            quant_conv = nn.Conv2d(2 * config.LatentChannels, 2 * config.LatentChannels, 1);
        if (config.UsePostQuantConv)
            post_quant_conv = nn.Conv2d(config.LatentChannels, config.LatentChannels, 1);
        RegisterComponents();
    }

    /// <summary>
    /// diffusers' <c>UNetMidBlock2D</c> as the VAE builds it: no time embedding, one attention head as wide as the
    /// block (attention_head_dim = channels), GroupNorm before attention, residual connection, output scale 1.
    /// </summary>
    internal static UNetMidBlock2D MidBlock(AutoencoderKLConfig c, string path)
    {
        int channels = c.BlockOutChannels[^1];
        var settings = new UNetBlockSettings(TembChannels: null, NormEps, c.ActFn, c.NormNumGroups, TimeScaleShift: "default", Dropout: 0,
            AttentionHeadDim: channels, new ModelStructure(), path);
        return new UNetMidBlock2D(settings, channels, outputScaleFactor: 1, attnGroups: null, c.MidBlockAddAttention);
    }

    public VaeEncoder Encoder => encoder;
    public VaeDecoder Decoder => decoder;

    /// <summary>The 1x1 convolution <see cref="Decode"/> applies before the decoder; null when use_post_quant_conv is off.</summary>
    public Conv2d? PostQuantConv => post_quant_conv;

    /// <summary>Pipelines multiply encoded latents by this and divide by it before decoding.</summary>
    public double ScalingFactor => Config.ScalingFactor;

    /// <summary>Subtracted from latents before scaling (added back before decoding); null for Stable Diffusion 1.x / 2.x / XL.</summary>
    public double? ShiftFactor => Config.ShiftFactor;

    /// <summary>How many times smaller the latents are than the image in each direction (8 for Stable Diffusion).</summary>
    public int DownsampleFactor => 1 << (Config.BlockOutChannels.Length - 1);

    /// <summary>
    /// image [B, in_channels, H, W] (in [-1, 1]) -> (mean, logvar), each [B, latent_channels, H / f, W / f]: diffusers'
    /// <c>encode(image).latent_dist.mean</c> and <c>.logvar</c>, the log-variance clamped to [-30, 20] as there.
    /// </summary>
    public (Tensor Mean, Tensor Logvar) Encode(Tensor image)
    {
        if (image.dim() != 4 || image.shape[1] != Config.InChannels)
            throw new ArgumentException($"AutoencoderKL.Encode takes an image of shape [batch, {Config.InChannels}, height, width], " +
                $"not [{string.Join(", ", image.shape)}].", nameof(image));
        // 1. encode: [B, 2 * latent, h, w]
        var moments = encoder.call(image);
        if (quant_conv is not null)
            moments = quant_conv.call(moments);
        // 2. split into the diagonal Gaussian's parameters
        var chunks = moments.chunk(2, 1);
        return (chunks[0], chunks[1].clamp(MinLogvar, MaxLogvar));
    }

    /// <summary>latent [B, latent_channels, h, w] (unscaled: already divided by <see cref="ScalingFactor"/>) -> image [B, out_channels, h * f, w * f].</summary>
    public Tensor Decode(Tensor latent)
    {
        if (latent.dim() != 4 || latent.shape[1] != Config.LatentChannels)
            throw new ArgumentException($"AutoencoderKL.Decode takes latents of shape [batch, {Config.LatentChannels}, height, width], " +
                $"not [{string.Join(", ", latent.shape)}].", nameof(latent));
        if (post_quant_conv is not null)
            latent = post_quant_conv.call(latent);
        return decoder.call(latent);
    }

    /// <summary>
    /// Loads a diffusers vae folder (config.json + diffusion_pytorch_model.safetensors, or its .fp16 / .bf16 variant or a
    /// sharded index, upcast to float32 tensor by tensor), or the <c>vae/</c> subfolder of a pipeline folder. Loading is
    /// strict: a missing, unexpected or mis-shaped tensor is refused by name, so the VAE never runs with random weights.
    /// Checkpoints saved before diffusers renamed the attention projections (query, key, value, proj_attn) are renamed
    /// to to_q, to_k, to_v, to_out.0 here, once.
    /// </summary>
    public static AutoencoderKL Load(string path)
    {
        string folder = ResolveFolder(path);
        var config = AutoencoderKLConfig.FromJson(ConfigJson.Load(Path.Combine(folder, ModelFolder.Config)));
        var model = new AutoencoderKL(config);
        try
        {
            using var weights = DiffusersModelLoader.OpenWeights(folder);
            DiffusersModelLoader.RenameLegacyAttentionKeys(weights.Tensors);
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

    private static string ResolveFolder(string path)
    {
        if (File.Exists(path) && Path.GetFileName(path) == ModelFolder.Config)
            path = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(path))
            throw new DirectoryNotFoundException($"No VAE folder at '{path}'. Give a diffusers vae folder (config.json + {ModelFolder.Weights}) or a Stable Diffusion pipeline folder.");
        if (!File.Exists(Path.Combine(path, ModelFolder.Config)) && File.Exists(Path.Combine(path, ModelFolder.PipelineIndex)))
        {
            string sub = Path.Combine(path, "vae");
            if (!File.Exists(Path.Combine(sub, ModelFolder.Config)))
                throw new ModelFormatException($"'{path}' is a pipeline (model_index.json) but has no vae/ subfolder with a config.json.");
            return sub;
        }
        if (!File.Exists(Path.Combine(path, ModelFolder.Config)))
            throw new ModelFormatException($"'{path}' has no config.json (nor model_index.json). Give a diffusers vae folder.");
        return path;
    }
}
