using System.Text.Json.Nodes;

namespace DiffusionPrune.Models;

/// <summary>
/// Per-layer widths that differ from what the diffusers config implies, and layers removed outright:
/// what pruning records next to the weights so a pruned model reloads from config + safetensors.
/// Stored in config.json under <see cref="JsonKey"/>; an unpruned model has none.
/// Keys are module paths exactly as in the state dict (e.g. <c>down_blocks.1.resnets.0</c>,
/// <c>mid_block.attentions.0</c>, <c>transformer_blocks.2.attn1</c>, <c>transformer_blocks.2.ff</c>).
/// </summary>
public sealed class ModelStructure
{
    public const string JsonKey = "dprune_structure";

    /// <summary>ResNet block path -> conv1 output channels (the block's inner width).</summary>
    public SortedDictionary<string, int> ResnetInnerChannels { get; } = new(StringComparer.Ordinal);

    /// <summary>Attention module path -> number of heads kept (head width unchanged).</summary>
    public SortedDictionary<string, int> AttentionHeads { get; } = new(StringComparer.Ordinal);

    /// <summary>Feed-forward module path -> hidden neurons kept.</summary>
    public SortedDictionary<string, int> FeedForwardInner { get; } = new(StringComparer.Ordinal);

    /// <summary>Residual layers removed entirely (they act as the identity).</summary>
    public SortedSet<string> RemovedLayers { get; } = new(StringComparer.Ordinal);

    public bool IsEmpty => ResnetInnerChannels.Count == 0 && AttentionHeads.Count == 0 && FeedForwardInner.Count == 0 && RemovedLayers.Count == 0;

    public int ResnetInner(string path, int @default) => ResnetInnerChannels.TryGetValue(path, out var v) ? v : @default;
    public int Heads(string path, int @default) => AttentionHeads.TryGetValue(path, out var v) ? v : @default;
    public int FeedForward(string path, int @default) => FeedForwardInner.TryGetValue(path, out var v) ? v : @default;
    public bool IsRemoved(string path) => RemovedLayers.Contains(path);

    public ModelStructure Clone()
    {
        var copy = new ModelStructure();
        foreach (var (k, v) in ResnetInnerChannels) copy.ResnetInnerChannels[k] = v;
        foreach (var (k, v) in AttentionHeads) copy.AttentionHeads[k] = v;
        foreach (var (k, v) in FeedForwardInner) copy.FeedForwardInner[k] = v;
        foreach (var k in RemovedLayers) copy.RemovedLayers.Add(k);
        return copy;
    }

    public JsonObject ToJson()
    {
        static JsonObject Map(SortedDictionary<string, int> d)
        {
            var o = new JsonObject();
            foreach (var (k, v) in d) o[k] = v;
            return o;
        }
        return new JsonObject
        {
            ["resnet_inner_channels"] = Map(ResnetInnerChannels),
            ["attention_heads"] = Map(AttentionHeads),
            ["feed_forward_inner"] = Map(FeedForwardInner),
            ["removed_layers"] = new JsonArray(RemovedLayers.Select(x => (JsonNode)JsonValue.Create(x)!).ToArray()),
        };
    }

    public static ModelStructure FromConfig(ConfigJson config)
    {
        var structure = new ModelStructure();
        if (!config.Has(JsonKey) || config.IsNull(JsonKey)) return structure;
        if (config.Root[JsonKey] is not JsonObject o)
            throw new ModelFormatException($"{config.Source}: '{JsonKey}' must be an object.");
        try
        {
            void Read(string key, SortedDictionary<string, int> target)
            {
                if (o[key] is JsonObject m)
                    foreach (var (k, v) in m)
                    {
                        int width = (int)v!.GetValue<double>();
                        if (width < 1) throw new ModelFormatException($"{config.Source}: {JsonKey}.{key}.{k} = {width}; a kept width must be at least 1.");
                        target[k] = width;
                    }
            }
            Read("resnet_inner_channels", structure.ResnetInnerChannels);
            Read("attention_heads", structure.AttentionHeads);
            Read("feed_forward_inner", structure.FeedForwardInner);
            if (o["removed_layers"] is JsonArray removed)
                foreach (var item in removed) structure.RemovedLayers.Add(item!.GetValue<string>());
        }
        catch (InvalidOperationException e)
        {
            throw new ModelFormatException($"{config.Source}: '{JsonKey}' is malformed ({e.Message}).");
        }
        return structure;
    }
}
