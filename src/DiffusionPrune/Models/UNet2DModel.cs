using DiffusionPrune.Models.Layers;
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models;

/// <summary>
/// diffusers' <c>UNet2DModel</c> in TorchSharp. Field names are the state-dict keys, so a diffusers
/// <c>diffusion_pytorch_model.safetensors</c> loads one to one.
/// </summary>
public sealed class UNet2DModel : DiffusionModel
{
    private readonly Conv2d conv_in;
    private readonly nn.Module<Tensor, Tensor>? time_proj; // fourier or learned; positional has no weights
    private readonly TimestepEmbedding time_embedding;
    private readonly nn.Module<Tensor, Tensor>? class_embedding;
    private readonly ModuleList<DownBlock2D> down_blocks;
    private readonly UNetMidBlock2D? mid_block;
    private readonly ModuleList<UpBlock2D> up_blocks;
    private readonly GroupNorm conv_norm_out;
    private readonly Conv2d conv_out;

    public UNet2DConfig Config { get; }

    public UNet2DModel(UNet2DConfig config) : base(nameof(UNet2DModel))
    {
        config.Validate();
        Config = config;
        var c = config;
        int[] channels = c.BlockOutChannels;
        int timeEmbedDim = c.TimeEmbedDim;

        conv_in = nn.Conv2d(c.InChannels, channels[0], 3, padding: 1);

        int timestepInputDim = channels[0];
        if (c.TimeEmbeddingType == "fourier")
        {
            time_proj = new GaussianFourierProjection(channels[0], scale: 16);
            timestepInputDim = 2 * channels[0];
        }
        else if (c.TimeEmbeddingType == "learned")
        {
            time_proj = nn.Embedding(c.NumTrainTimesteps!.Value, channels[0]);
        }
        time_embedding = new TimestepEmbedding(timestepInputDim, timeEmbedDim);

        if (c.ClassEmbedType is null && c.NumClassEmbeds is int numClasses)
            class_embedding = nn.Embedding(numClasses, timeEmbedDim);
        else if (c.ClassEmbedType == "timestep")
            class_embedding = new TimestepEmbedding(timestepInputDim, timeEmbedDim);
        else if (c.ClassEmbedType == "identity")
            class_embedding = nn.Identity();

        UNetBlockSettings Settings(string path, int outputChannel) => new(timeEmbedDim, c.NormEps, c.ActFn, c.NormNumGroups,
            c.ResnetTimeScaleShift, c.Dropout, c.AttentionHeadDim ?? outputChannel, c.Structure, path);

        // 3. down
        down_blocks = new ModuleList<DownBlock2D>();
        int outputChannel = channels[0];
        for (int i = 0; i < c.DownBlockTypes.Length; i++)
        {
            int inputChannel = outputChannel;
            outputChannel = channels[i];
            bool isFinal = i == channels.Length - 1;
            string type = c.DownBlockTypes[i].StartsWith("UNetRes") ? c.DownBlockTypes[i][7..] : c.DownBlockTypes[i];
            bool attention = type == "AttnDownBlock2D";
            down_blocks.Add(new DownBlock2D(Settings($"down_blocks.{i}", outputChannel), c.LayersPerBlock, inputChannel, outputChannel,
                attention, isFinal ? null : (attention ? c.DownsampleType : "conv"), c.DownsamplePadding));
        }

        // 4. mid
        if (c.MidBlockType is not null)
            mid_block = new UNetMidBlock2D(Settings("mid_block", channels[^1]), channels[^1], c.MidBlockScaleFactor, c.AttnNormNumGroups, c.AddAttention);

        // 5. up
        up_blocks = new ModuleList<UpBlock2D>();
        var reversed = channels.Reverse().ToArray();
        outputChannel = reversed[0];
        for (int i = 0; i < c.UpBlockTypes.Length; i++)
        {
            int prevOutputChannel = outputChannel;
            outputChannel = reversed[i];
            int inputChannel = reversed[Math.Min(i + 1, channels.Length - 1)];
            bool isFinal = i == channels.Length - 1;
            string type = c.UpBlockTypes[i].StartsWith("UNetRes") ? c.UpBlockTypes[i][7..] : c.UpBlockTypes[i];
            bool attention = type == "AttnUpBlock2D";
            up_blocks.Add(new UpBlock2D(Settings($"up_blocks.{i}", outputChannel), c.LayersPerBlock + 1, inputChannel, prevOutputChannel,
                outputChannel, attention, isFinal ? null : (attention ? c.UpsampleType : "conv")));
        }

        // 6. out
        conv_norm_out = LayerFactory.GroupNorm(c.NormNumGroups, channels[0], c.NormEps);
        conv_out = nn.Conv2d(channels[0], c.OutChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override string ClassName => UNet2DConfig.ClassName;
    public override int InChannels => Config.InChannels;
    public override int OutChannels => Config.OutChannels;
    public override int[] SampleSize => Config.SampleSize;
    public override int? NumClasses => Config.NumClassEmbeds;
    public override ModelStructure Structure => Config.Structure;
    public override JsonObject ConfigToJson() => Config.ToJson();

    public Conv2d ConvIn => conv_in;
    /// <summary>The Fourier projection or learned table; null for positional (sinusoidal) embeddings, which have no weights.</summary>
    public nn.Module<Tensor, Tensor>? TimeProj => time_proj;
    public TimestepEmbedding TimeEmbedding => time_embedding;
    /// <summary>An Embedding (num_class_embeds), a TimestepEmbedding (class_embed_type timestep), an Identity, or null.</summary>
    public nn.Module<Tensor, Tensor>? ClassEmbedding => class_embedding;
    public GroupNorm ConvNormOut => conv_norm_out;
    public Conv2d ConvOut => conv_out;
    public IList<DownBlock2D> DownBlocks => down_blocks;
    public UNetMidBlock2D? MidBlock => mid_block;
    public IList<UpBlock2D> UpBlocks => up_blocks;

    public override Tensor Forward(Tensor sample, Conditioning conditioning)
    {
        conditioning.RejectUnused(ClassName, classLabels: class_embedding is not null);
        var (timestep, classLabels) = (conditioning.Timestep, conditioning.ClassLabels);
        var c = Config;
        // 0. center input if necessary
        if (c.CenterInputSample)
            sample = sample * 2 - 1.0;

        // 1. time
        var timesteps = BatchTimesteps(timestep, sample.shape[0], sample.device);
        var tEmb = TimeProjection(timesteps);
        var emb = time_embedding.call(tEmb);

        if (class_embedding is not null)
        {
            if (classLabels is null)
                throw new ArgumentException("This UNet2DModel is class-conditional: class_labels are required.");
            var labels = c.ClassEmbedType == "timestep" ? TimeProjection(classLabels) : classLabels;
            emb = emb + class_embedding.call(labels);
        }

        // 2. pre-process
        sample = conv_in.call(sample);

        // 3. down
        var downBlockResSamples = new List<Tensor> { sample };
        for (int i = 0; i < down_blocks.Count; i++)
            sample = Tap($"down_blocks.{i}", down_blocks[i].Forward(sample, emb, downBlockResSamples));

        // 4. mid
        if (mid_block is not null)
            sample = Tap("mid_block", mid_block.Forward(sample, emb));

        // 5. up
        for (int i = 0; i < up_blocks.Count; i++)
            sample = Tap($"up_blocks.{i}", up_blocks[i].Forward(sample, downBlockResSamples, emb));

        // 6. post-process
        sample = conv_out.call(nn.functional.silu(conv_norm_out.call(sample)));
        if (c.TimeEmbeddingType == "fourier")
            sample = sample / timesteps.to_type(sample.dtype).view(-1, 1, 1, 1);
        return sample;
    }

    private Tensor TimeProjection(Tensor timesteps) => Config.TimeEmbeddingType switch
    {
        "positional" => TimestepFeatures.Sinusoidal(timesteps, Config.BlockOutChannels[0], Config.FlipSinToCos, Config.FreqShift),
        "learned" => time_proj!.call(timesteps.to_type(ScalarType.Int64)),
        _ => time_proj!.call(timesteps),
    };
}
