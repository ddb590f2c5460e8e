using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace DiffusionPrune.Models.Layers;

/// <summary>
/// diffusers' <c>ResnetBlock2D</c> (pre-norm, time embedding added after conv1 or applied as scale/shift
/// after norm2). <paramref name="innerChannels"/> is conv1's output width: equal to the output width
/// in diffusers, smaller after channel pruning (norm2 keeps its group count).
/// </summary>
public sealed class ResnetBlock2D : nn.Module<Tensor, Tensor?, Tensor>
{
    private readonly GroupNorm norm1;
    private readonly Conv2d conv1;
    private readonly Linear? time_emb_proj;
    private readonly GroupNorm norm2;
    private readonly Conv2d conv2;
    private readonly Conv2d? conv_shortcut;

    private readonly string _act;
    private readonly string _timeEmbeddingNorm;
    private readonly double _outputScaleFactor;
    private readonly double _dropout;
    private readonly bool _up;
    private readonly bool _down;

    public int InChannels { get; }
    public int OutChannels { get; }
    public int InnerChannels { get; }
    public int Groups { get; }
    public double Eps { get; }
    public string TimeEmbeddingNorm => _timeEmbeddingNorm;
    public string Act => _act;
    public double OutputScaleFactor => _outputScaleFactor;
    public bool Up => _up;
    public bool Down => _down;

    /// <summary>
    /// Optional gate on the inner channels (shape [inner], values in [0, 1]) used by mask learning.
    /// When set, norm2's group statistics are weighted by the gate, so a gate of exactly 0 behaves
    /// like the channel being physically removed.
    /// </summary>
    public Tensor? ChannelGate { get; set; }

    /// <summary>
    /// Optional gate on the whole block (a scalar or [1] tensor): output = x + g * (block(x) - x), so a
    /// gate of exactly 0 gives the identity that <see cref="RemovedResnet"/> computes after layer
    /// pruning. Only meaningful where the block keeps its input's shape (in == out, no resampling).
    /// </summary>
    public Tensor? LayerGate { get; set; }

    /// <summary>Whether the block up- or downsamples (then it cannot be removed as the identity).</summary>
    public bool Resamples => _up || _down;

    public ResnetBlock2D(int inChannels, int outChannels, int? tembChannels, int groups, double eps,
        string timeEmbeddingNorm = "default", string act = "silu", double outputScaleFactor = 1.0, double dropout = 0.0,
        bool up = false, bool down = false, int? innerChannels = null) : base(nameof(ResnetBlock2D))
    {
        int inner = innerChannels ?? outChannels;
        if (inner % groups != 0)
            throw new ModelFormatException($"ResNet block inner width {inner} is not a multiple of its {groups} groups.");
        InChannels = inChannels;
        OutChannels = outChannels;
        InnerChannels = inner;
        Groups = groups;
        Eps = eps;
        norm1 = LayerFactory.GroupNorm(groups, inChannels, eps);
        conv1 = nn.Conv2d(inChannels, inner, 3, stride: 1, padding: 1);
        if (tembChannels is int temb)
            time_emb_proj = timeEmbeddingNorm == "scale_shift" ? nn.Linear(temb, 2 * inner) : nn.Linear(temb, inner);
        norm2 = LayerFactory.GroupNorm(groups, inner, eps);
        conv2 = nn.Conv2d(inner, outChannels, 3, stride: 1, padding: 1);
        if (inChannels != outChannels)
            conv_shortcut = nn.Conv2d(inChannels, outChannels, 1, stride: 1, padding: 0L);
        _act = act;
        _timeEmbeddingNorm = timeEmbeddingNorm;
        _outputScaleFactor = outputScaleFactor;
        _dropout = dropout;
        _up = up;
        _down = down;
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputTensor, Tensor? temb) => LayerScope.Run(inputTensor, () => Compute(inputTensor, temb));

    private Tensor Compute(Tensor inputTensor, Tensor? temb)
    {
        var blockInput = inputTensor;
        var hiddenStates = Activations.Apply(_act, norm1.call(inputTensor));
        if (_up)
        {
            inputTensor = Resampling.Nearest2x(inputTensor);
            hiddenStates = Resampling.Nearest2x(hiddenStates);
        }
        else if (_down)
        {
            inputTensor = nn.functional.avg_pool2d(inputTensor, 2, 2);
            hiddenStates = nn.functional.avg_pool2d(hiddenStates, 2, 2);
        }

        hiddenStates = conv1.call(hiddenStates);
        Tensor? projected = null;
        if (time_emb_proj is not null && temb is not null)
            projected = time_emb_proj.call(Activations.Apply(_act, temb)).unsqueeze(-1).unsqueeze(-1);

        if (_timeEmbeddingNorm == "scale_shift")
        {
            if (projected is null) throw new InvalidOperationException("A scale_shift ResNet block needs a time embedding.");
            var chunks = projected.chunk(2, 1);
            hiddenStates = Norm2(hiddenStates) * (chunks[0] + 1) + chunks[1];
        }
        else
        {
            if (projected is not null) hiddenStates = hiddenStates + projected;
            hiddenStates = Norm2(hiddenStates);
        }
        hiddenStates = Activations.Apply(_act, hiddenStates);
        if (ChannelGate is not null)
            hiddenStates = hiddenStates * ChannelGate.view(1, -1, 1, 1);
        if (_dropout > 0 && training)
            hiddenStates = nn.functional.dropout(hiddenStates, _dropout, training);
        hiddenStates = conv2.call(hiddenStates);

        if (conv_shortcut is not null)
            inputTensor = conv_shortcut.call(inputTensor);
        var output = inputTensor + hiddenStates;
        if (_outputScaleFactor != 1.0) output = output / _outputScaleFactor;
        return LayerGate is null ? output : blockInput + LayerGate * (output - blockInput);
    }

    private Tensor Norm2(Tensor x) => ChannelGate is null ? norm2.call(x) : GatedGroupNorm.Apply(x, ChannelGate, Groups, norm2.weight!, norm2.bias!, Eps);

    public GroupNorm Norm1Module => norm1;
    public Conv2d Conv1Module => conv1;
    public Linear? TimeEmbProjModule => time_emb_proj;
    public GroupNorm Norm2Module => norm2;
    public Conv2d Conv2Module => conv2;
    public Conv2d? ConvShortcutModule => conv_shortcut;
}

/// <summary>
/// GroupNorm whose per-group mean and variance are weighted by a channel gate: with a 0/1 gate it
/// equals GroupNorm over the kept channels only, which is what the physically pruned block computes.
/// </summary>
public static class GatedGroupNorm
{
    public static Tensor Apply(Tensor x, Tensor gate, int groups, Tensor weight, Tensor bias, double eps)
    {
        // x: [B, C, H, W]; gate: [C]
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
        var xg = x.view(b, groups, c / groups, h * w);
        var g = gate.view(1, groups, c / groups, 1);
        // Weighted element count per group. A group whose gates are all 0 would divide by ~0 and send 1e12-sized
        // gradients into its gates; at least one element keeps the statistics finite (the gates zero that group's
        // output anyway) and equals the true count whenever one channel of the group is kept (count >= H*W >= 1).
        var count = (g.sum(2, keepdim: true) * (h * w)).clamp_min(1.0);
        var mean = (xg * g).sum([2, 3], keepdim: true) / count;
        var centered = xg - mean;
        var variance = (centered * centered * g).sum([2, 3], keepdim: true) / count;
        var normalized = (centered / (variance + eps).sqrt()).view(b, c, h, w);
        return normalized * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1);
    }
}
