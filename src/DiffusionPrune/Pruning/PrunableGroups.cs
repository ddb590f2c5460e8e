using DiffusionPrune.Models;
using DiffusionPrune.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Pruning;

/// <summary>
/// One tensor that shrinks with a group: the state-dict key, the dimension that shrinks, and how kept
/// unit indices map to kept indices along that dimension (a head is <c>headDim</c> rows; a
/// scale_shift ResNet channel is one row in each half of time_emb_proj).
/// </summary>
public sealed record CoupledTensor(string Key, Tensor Tensor, int Dim, Func<int[], long[]> Indices)
{
    /// <summary>Parameters this tensor loses when only <paramref name="kept"/> units stay.</summary>
    public long RemovedParameters(int[] kept)
    {
        long size = Tensor.shape[Dim];
        long perSlice = Tensor.numel() / size;
        return perSlice * (size - Indices(kept).LongLength);
    }
}

/// <summary>Anything pruning can act on: a set of units inside a module, or a whole removable layer.</summary>
public abstract class PrunableGroup
{
    protected PrunableGroup(string path) => Path = path;

    /// <summary>Module path exactly as the state-dict prefix, e.g. <c>down_blocks.1.resnets.0</c>.</summary>
    public string Path { get; }

    /// <summary>Sets the live model's gate from <paramref name="mask"/> (0/1 or soft). The caller owns the tensor.</summary>
    public abstract void ApplyMask(Tensor mask);

    /// <summary>Removes the gate; the module computes its unmasked output again.</summary>
    public abstract void ClearMask();

    /// <summary>Whether this group lies inside (or is) the layer at <paramref name="layerPath"/>.</summary>
    public bool IsWithin(string layerPath) => Path == layerPath || Path.StartsWith(layerPath + ".", StringComparison.Ordinal);

    public override string ToString() => $"{GetType().Name}({Path})";
}

/// <summary>
/// Units (channels, heads, neurons) inside one module that must be removed together with their rows
/// and columns in every coupled tensor. Indices are always relative to the live (possibly already pruned) model.
/// </summary>
public abstract class UnitGroup : PrunableGroup
{
    protected UnitGroup(string path) : base(path) { }

    /// <summary>Current number of units (the module's width as built).</summary>
    public abstract int Units { get; }

    /// <summary>The tensors that shrink with the units, keyed as in the state dict.</summary>
    public abstract IReadOnlyList<CoupledTensor> Coupled { get; }

    /// <summary>Exact parameters one unit carries across all coupled tensors.</summary>
    public long ParametersPerUnit => Coupled.Sum(c => c.Tensor.numel() / c.Tensor.shape[c.Dim] * c.Indices([0]).LongLength);

    /// <summary>Parameters removed when only <paramref name="kept"/> units stay.</summary>
    public long RemovedParameters(int[] kept) => Coupled.Sum(c => c.RemovedParameters(kept));

    /// <summary>Throws <see cref="PruningPlanException"/> if <paramref name="kept"/> (sorted, distinct) is not a valid keep set.</summary>
    public virtual void ValidateKept(int[] kept)
    {
        if (kept.Length == 0)
            throw new PruningPlanException($"Group '{Path}' keeps no units; keep at least one (remove the whole layer instead, if it is removable).");
        for (int i = 0; i < kept.Length; i++)
        {
            if (kept[i] < 0 || kept[i] >= Units)
                throw new PruningPlanException($"Group '{Path}' has {Units} units, but the plan keeps index {kept[i]}; indices must lie in [0, {Units - 1}].");
            if (i > 0 && kept[i] <= kept[i - 1])
                throw new PruningPlanException($"Group '{Path}': kept indices must be distinct and sorted (index {kept[i]} follows {kept[i - 1]}).");
        }
    }

    /// <summary>The nearest valid number of units to keep, at least the minimum (one unit, or one per GroupNorm group).</summary>
    public virtual int ValidKeepCount(int desired) => Math.Clamp(desired, 1, Units);

    /// <summary>
    /// Keeps the <paramref name="keep"/> highest-scoring units (a trivial importance-to-plan step); the
    /// result is sorted and valid for this group. <paramref name="keep"/> must already be a valid count.
    /// </summary>
    public virtual int[] KeepTop(IReadOnlyList<float> scores, int keep)
    {
        CheckScores(scores);
        if (keep != ValidKeepCount(keep))
            throw new ArgumentException($"Group '{Path}' cannot keep {keep} units; the nearest valid count is {ValidKeepCount(keep)}.", nameof(keep));
        return Enumerable.Range(0, Units).OrderByDescending(i => scores[i]).ThenBy(i => i).Take(keep).Order().ToArray();
    }

    protected void CheckScores(IReadOnlyList<float> scores)
    {
        if (scores.Count != Units)
            throw new ArgumentException($"Group '{Path}' has {Units} units but {scores.Count} scores were given.", nameof(scores));
    }

    protected void CheckMask(Tensor mask)
    {
        if (mask.numel() != Units)
            throw new ArgumentException($"Group '{Path}' has {Units} units but the mask has {mask.numel()} entries.", nameof(mask));
    }

    protected static Func<int[], long[]> Identity => kept => kept.Select(i => (long)i).ToArray();

    protected static Func<int[], long[]> Blocks(int width) =>
        kept => kept.SelectMany(i => Enumerable.Range(i * width, width).Select(j => (long)j)).ToArray();
}

/// <summary>
/// Inner channels of a ResNet block (conv1 output): conv1 rows + bias, norm2 weight/bias, time_emb_proj
/// rows (both halves with scale_shift), conv2 input columns. norm2 keeps its group count, so every
/// GroupNorm group must keep the same number of channels.
/// </summary>
public sealed class ResnetChannelGroup : UnitGroup
{
    private readonly List<CoupledTensor> _coupled = [];

    public ResnetChannelGroup(string path, ResnetBlock2D block) : base(path)
    {
        Block = block;
        int inner = block.InnerChannels;
        _coupled.Add(new($"{path}.conv1.weight", block.Conv1Module.weight!, 0, Identity));
        if (block.Conv1Module.bias is { } b1) _coupled.Add(new($"{path}.conv1.bias", b1, 0, Identity));
        _coupled.Add(new($"{path}.norm2.weight", block.Norm2Module.weight!, 0, Identity));
        _coupled.Add(new($"{path}.norm2.bias", block.Norm2Module.bias!, 0, Identity));
        if (block.TimeEmbProjModule is { } proj)
        {
            // scale_shift: rows [0, inner) are the scale, [inner, 2 inner) the shift of the same channels.
            Func<int[], long[]> rows = block.TimeEmbeddingNorm == "scale_shift"
                ? kept => kept.Select(i => (long)i).Concat(kept.Select(i => (long)i + inner)).ToArray()
                : Identity;
            _coupled.Add(new($"{path}.time_emb_proj.weight", proj.weight!, 0, rows));
            if (proj.bias is { } pb) _coupled.Add(new($"{path}.time_emb_proj.bias", pb, 0, rows));
        }
        _coupled.Add(new($"{path}.conv2.weight", block.Conv2Module.weight!, 1, Identity));
    }

    public ResnetBlock2D Block { get; }
    public override int Units => Block.InnerChannels;
    public override IReadOnlyList<CoupledTensor> Coupled => _coupled;

    /// <summary>norm2's group count G: keep a multiple of G, the same number in each group.</summary>
    public int NormGroups => Block.Groups;
    public int ChannelsPerNormGroup => Block.InnerChannels / Block.Groups;

    public override void ValidateKept(int[] kept)
    {
        base.ValidateKept(kept);
        var perGroup = new int[NormGroups];
        foreach (int i in kept) perGroup[i / ChannelsPerNormGroup]++;
        if (perGroup.Distinct().Count() != 1)
            throw new PruningPlanException(
                $"ResNet block '{Path}': norm2 has {NormGroups} groups of {ChannelsPerNormGroup} channels, and each group must keep the same number " +
                $"of channels, but the plan keeps [{string.Join(", ", perGroup)}] per group. Keep a multiple of {NormGroups} channels, evenly spread.");
    }

    public override int ValidKeepCount(int desired)
    {
        int perGroup = Math.Clamp((int)Math.Round(desired / (double)NormGroups), 1, ChannelsPerNormGroup);
        return perGroup * NormGroups;
    }

    /// <summary>Keeps the top keep / G channels within each norm2 group.</summary>
    public override int[] KeepTop(IReadOnlyList<float> scores, int keep)
    {
        CheckScores(scores);
        if (keep != ValidKeepCount(keep))
            throw new ArgumentException($"ResNet block '{Path}' cannot keep {keep} channels; the nearest valid count is {ValidKeepCount(keep)} (a multiple of {NormGroups}).", nameof(keep));
        int per = keep / NormGroups, width = ChannelsPerNormGroup;
        return Enumerable.Range(0, NormGroups)
            .SelectMany(g => Enumerable.Range(g * width, width).OrderByDescending(i => scores[i]).ThenBy(i => i).Take(per))
            .Order().ToArray();
    }

    public override void ApplyMask(Tensor mask)
    {
        CheckMask(mask);
        Block.ChannelGate = mask.view(-1);
    }

    public override void ClearMask() => Block.ChannelGate = null;
}

/// <summary>Heads of an attention module: to_q/to_k/to_v rows (+ biases) of the head, to_out.0 input columns.</summary>
public sealed class AttentionHeadGroup : UnitGroup
{
    private readonly List<CoupledTensor> _coupled = [];

    public AttentionHeadGroup(string path, Attention attention) : base(path)
    {
        Attention = attention;
        var rows = Blocks(attention.DimHead);
        foreach (var (name, linear) in new[] { ("to_q", attention.ToQ), ("to_k", attention.ToK), ("to_v", attention.ToV) })
        {
            _coupled.Add(new($"{path}.{name}.weight", linear.weight!, 0, rows));
            if (linear.bias is { } b) _coupled.Add(new($"{path}.{name}.bias", b, 0, rows));
        }
        _coupled.Add(new($"{path}.to_out.0.weight", attention.ToOut.weight!, 1, rows));
    }

    public Attention Attention { get; }
    public override int Units => Attention.Heads;
    public override IReadOnlyList<CoupledTensor> Coupled => _coupled;

    public override void ApplyMask(Tensor mask)
    {
        CheckMask(mask);
        Attention.HeadGate = mask.view(-1);
    }

    public override void ClearMask() => Attention.HeadGate = null;
}

/// <summary>Hidden neurons of a DiT feed-forward: net.0.proj rows + bias, net.2 input columns.</summary>
public sealed class FeedForwardGroup : UnitGroup
{
    private readonly List<CoupledTensor> _coupled = [];

    public FeedForwardGroup(string path, FeedForward feedForward) : base(path)
    {
        FeedForward = feedForward;
        _coupled.Add(new($"{path}.net.0.proj.weight", feedForward.In.Proj.weight!, 0, Identity));
        if (feedForward.In.Proj.bias is { } b) _coupled.Add(new($"{path}.net.0.proj.bias", b, 0, Identity));
        _coupled.Add(new($"{path}.net.2.weight", feedForward.Out.weight!, 1, Identity));
    }

    public FeedForward FeedForward { get; }
    public override int Units => FeedForward.InnerDim;
    public override IReadOnlyList<CoupledTensor> Coupled => _coupled;

    public override void ApplyMask(Tensor mask)
    {
        CheckMask(mask);
        FeedForward.NeuronGate = mask.view(-1);
    }

    public override void ClearMask() => FeedForward.NeuronGate = null;
}

/// <summary>
/// Hidden neurons of a Stable Diffusion GEGLU feed-forward (<see cref="GegluFeedForward"/>): neuron i is row i (its value)
/// AND row inner + i (its gate) of net.0.proj, with their biases, and column i of net.2. Cutting only the first half, as
/// <see cref="FeedForwardGroup"/> would, pairs each value with another neuron's gate.
/// </summary>
public sealed class GegluFeedForwardGroup : UnitGroup
{
    private readonly List<CoupledTensor> _coupled = [];

    public GegluFeedForwardGroup(string path, GegluFeedForward feedForward) : base(path)
    {
        FeedForward = feedForward;
        int inner = feedForward.InnerDim;
        Func<int[], long[]> valueAndGate = kept => kept.Select(i => (long)i).Concat(kept.Select(i => (long)i + inner)).ToArray();
        _coupled.Add(new($"{path}.net.0.proj.weight", feedForward.In.Proj.weight!, 0, valueAndGate));
        if (feedForward.In.Proj.bias is { } b) _coupled.Add(new($"{path}.net.0.proj.bias", b, 0, valueAndGate));
        _coupled.Add(new($"{path}.net.2.weight", feedForward.Out.weight!, 1, Identity));
    }

    public GegluFeedForward FeedForward { get; }
    public override int Units => FeedForward.InnerDim;
    public override IReadOnlyList<CoupledTensor> Coupled => _coupled;

    public override void ApplyMask(Tensor mask)
    {
        CheckMask(mask);
        FeedForward.NeuronGate = mask.view(-1);
    }

    public override void ClearMask() => FeedForward.NeuronGate = null;
}

public enum LayerKind { ResnetBlock, AttentionBlock, TransformerBlock }

/// <summary>
/// A residual layer that can be removed outright (it becomes the identity): a ResNet block with
/// in == out channels and no resampling, a U-Net attention block, a DiT transformer block.
/// The mask is one value: 0 makes the live layer exactly the identity.
/// </summary>
public sealed class LayerGroup : PrunableGroup
{
    private readonly Action<Tensor?> _setGate;

    public LayerGroup(string path, LayerKind kind, nn.Module module, long removedParameters, Action<Tensor?> setGate) : base(path)
    {
        Kind = kind;
        Module = module;
        RemovedParameters = removedParameters;
        _setGate = setGate;
    }

    public LayerKind Kind { get; }
    public nn.Module Module { get; }

    /// <summary>Every parameter of <paramref name="module"/>.</summary>
    public static long ParametersOf(nn.Module module) => module.parameters().Sum(p => p.numel());

    /// <summary>Parameters removal saves (a DiT block 0 keeps its norm1.emb, which the output layer reads).</summary>
    public long RemovedParameters { get; }

    public override void ApplyMask(Tensor mask)
    {
        if (mask.numel() != 1)
            throw new ArgumentException($"Layer '{Path}' takes a single gate value but the mask has {mask.numel()} entries.", nameof(mask));
        _setGate(mask.view(1));
    }

    public override void ClearMask() => _setGate(null);
}

/// <summary>
/// The prunable groups of a loaded model, found from its module tree (coupling is declared per block
/// type above, not traced). Paths are state-dict prefixes; indices refer to the model as built.
/// </summary>
public sealed class PrunableGroups
{
    private readonly Dictionary<string, UnitGroup> _unitsByPath;
    private readonly Dictionary<string, LayerGroup> _layersByPath;

    private PrunableGroups(DiffusionModel model, List<UnitGroup> units, List<LayerGroup> layers, Dictionary<string, string> notRemovable)
    {
        Model = model;
        Units = units;
        Layers = layers;
        NotRemovable = notRemovable;
        _unitsByPath = units.ToDictionary(g => g.Path, StringComparer.Ordinal);
        _layersByPath = layers.ToDictionary(g => g.Path, StringComparer.Ordinal);
    }

    public DiffusionModel Model { get; }

    /// <summary>Channel, head and neuron groups, in module order.</summary>
    public IReadOnlyList<UnitGroup> Units { get; }

    /// <summary>Layers that can be removed as the identity, in module order.</summary>
    public IReadOnlyList<LayerGroup> Layers { get; }

    /// <summary>Layers that exist but cannot be removed, with the reason (used in error messages).</summary>
    public IReadOnlyDictionary<string, string> NotRemovable { get; }

    public IEnumerable<PrunableGroup> All => Units.Cast<PrunableGroup>().Concat(Layers);

    public UnitGroup? Unit(string path) => _unitsByPath.GetValueOrDefault(path);
    public LayerGroup? Layer(string path) => _layersByPath.GetValueOrDefault(path);

    /// <summary>
    /// Unit groups from the module tree (coupling is declared per block type above); removable layers from the model's
    /// family (<see cref="Families.ModelFamily.LayerCandidatesOf"/>).
    /// </summary>
    public static PrunableGroups Of(DiffusionModel model)
    {
        var units = new List<UnitGroup>();
        foreach (var (path, module) in model.named_modules())
        {
            switch (module)
            {
                case ResnetBlock2D resnet:
                    units.Add(new ResnetChannelGroup(path, resnet));
                    break;
                case Attention attention:
                    units.Add(new AttentionHeadGroup(path, attention));
                    break;
                case FeedForward ff:
                    units.Add(new FeedForwardGroup(path, ff));
                    break;
                case GegluFeedForward geglu:
                    units.Add(new GegluFeedForwardGroup(path, geglu));
                    break;
            }
        }
        var candidates = Families.ModelFamilies.Of(model).LayerCandidatesOf(model);
        return new PrunableGroups(model, units, candidates.Removable.ToList(), new Dictionary<string, string>(candidates.NotRemovable, StringComparer.Ordinal));
    }

    /// <summary>Removes every gate this model has (unit and layer gates).</summary>
    public void ClearMasks()
    {
        foreach (var group in All) group.ClearMask();
    }
}
