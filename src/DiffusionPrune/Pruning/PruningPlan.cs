using System.Text.Json;
using System.Text.Json.Nodes;

namespace DiffusionPrune.Pruning;

/// <summary>A plan that does not fit the model it is applied to; the message names the group or layer.</summary>
public sealed class PruningPlanException(string message) : Exception(Formats.Messages.OneLine(message));

/// <summary>
/// What to prune, as data: for each unit group (by state-dict path) the unit indices to keep, and the
/// layers to remove. Indices refer to the model the plan is applied to (which may already be pruned).
/// Groups not named keep all their units. Produced by any importance criterion, applied by
/// <see cref="StructuralSurgery"/> or, as gates, by <see cref="MaskedModel"/>.
/// </summary>
public sealed class PruningPlan
{
    /// <summary>Group path -> kept unit indices (sorted, distinct).</summary>
    public SortedDictionary<string, int[]> Keep { get; } = new(StringComparer.Ordinal);

    /// <summary>Paths of layers removed outright.</summary>
    public SortedSet<string> RemovedLayers { get; } = new(StringComparer.Ordinal);

    public bool IsEmpty => Keep.Count == 0 && RemovedLayers.Count == 0;

    public PruningPlan Clone()
    {
        var copy = new PruningPlan();
        foreach (var (k, v) in Keep) copy.Keep[k] = (int[])v.Clone();
        foreach (var k in RemovedLayers) copy.RemovedLayers.Add(k);
        return copy;
    }

    /// <summary>
    /// Checks the plan against a model's groups; throws <see cref="PruningPlanException"/> naming the first
    /// problem: an unknown group, an empty or out-of-range keep set, uneven GroupNorm keep, a layer that
    /// is unknown or not removable, or a group kept inside a removed layer.
    /// </summary>
    public void Validate(PrunableGroups groups)
    {
        foreach (var (path, kept) in Keep)
        {
            var group = groups.Unit(path) ?? throw new PruningPlanException(
                $"The plan narrows '{path}', which is not a prunable group of this model. Known groups include: {Sample(groups.Units.Select(g => g.Path))}.");
            if (kept is null) throw new PruningPlanException($"Group '{path}' has no kept-index list.");
            group.ValidateKept(kept);
        }
        foreach (var path in RemovedLayers)
        {
            if (groups.Layer(path) is not null) continue;
            if (groups.NotRemovable.TryGetValue(path, out var why))
                throw new PruningPlanException($"The plan removes layer '{path}', but it is not removable: {why}.");
            throw new PruningPlanException(
                $"The plan removes layer '{path}', which is not a removable layer of this model. Removable layers include: {Sample(groups.Layers.Select(g => g.Path))}.");
        }
        foreach (var path in Keep.Keys)
            foreach (var layer in RemovedLayers)
                if (path == layer || path.StartsWith(layer + ".", StringComparison.Ordinal))
                    throw new PruningPlanException($"The plan narrows '{path}' but also removes layer '{layer}' that holds it; drop one of the two.");
    }

    private static string Sample(IEnumerable<string> paths)
    {
        var list = paths.ToList();
        return list.Count == 0 ? "(none)" : string.Join(", ", list.Take(6)) + (list.Count > 6 ? $", ... ({list.Count} in all)" : "");
    }

    /// <summary>
    /// The single plan on the original model equivalent to applying <paramref name="first"/> and then
    /// <paramref name="second"/> (whose indices refer to the model <paramref name="first"/> produced).
    /// </summary>
    public static PruningPlan Compose(PruningPlan first, PruningPlan second)
    {
        var composed = first.Clone();
        foreach (var (path, kept) in second.Keep)
            composed.Keep[path] = first.Keep.TryGetValue(path, out var earlier)
                ? kept.Select(i => i >= 0 && i < earlier.Length ? earlier[i]
                    : throw new PruningPlanException($"Group '{path}' keeps {earlier.Length} units after the first plan, but the second keeps index {i}.")).ToArray()
                : (int[])kept.Clone();
        foreach (var path in second.RemovedLayers)
        {
            composed.RemovedLayers.Add(path);
            foreach (var inside in composed.Keep.Keys.Where(k => k == path || k.StartsWith(path + ".", StringComparison.Ordinal)).ToList())
                composed.Keep.Remove(inside);
        }
        return composed;
    }

    // ---- JSON ----

    public JsonObject ToJson()
    {
        var keep = new JsonObject();
        foreach (var (path, kept) in Keep)
            keep[path] = new JsonArray(kept.Select(i => (JsonNode)JsonValue.Create(i)).ToArray());
        return new JsonObject
        {
            ["keep"] = keep,
            ["removed_layers"] = new JsonArray(RemovedLayers.Select(p => (JsonNode)JsonValue.Create(p)!).ToArray()),
        };
    }

    public string ToJsonString() => ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true });

    public void Save(string path) => File.WriteAllText(path, ToJsonString());

    public static PruningPlan Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"No pruning plan at '{path}'.", path);
        return Parse(File.ReadAllText(path), path);
    }

    public static PruningPlan Parse(string json, string source = "plan")
    {
        try
        {
            if (JsonNode.Parse(json) is not JsonObject root)
                throw new PruningPlanException($"{source}: a pruning plan must be a JSON object with 'keep' and 'removed_layers'.");
            var plan = new PruningPlan();
            if (root["keep"] is JsonObject keep)
                foreach (var (path, value) in keep)
                {
                    if (value is not JsonArray array)
                        throw new PruningPlanException($"{source}: keep['{path}'] must be an array of unit indices.");
                    plan.Keep[path] = array.Select(v => v!.GetValue<int>()).ToArray();
                }
            else if (root["keep"] is not null)
                throw new PruningPlanException($"{source}: 'keep' must be an object of group path -> kept indices.");
            if (root["removed_layers"] is JsonArray removed)
                foreach (var item in removed) plan.RemovedLayers.Add(item!.GetValue<string>());
            else if (root["removed_layers"] is not null)
                throw new PruningPlanException($"{source}: 'removed_layers' must be an array of layer paths.");
            return plan;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new PruningPlanException($"{source} is not a valid pruning plan: {Formats.Messages.OneLine(e.Message)}");
        }
    }
}
