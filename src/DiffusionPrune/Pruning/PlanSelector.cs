namespace DiffusionPrune.Pruning;

/// <summary>How unit scores are ranked when a parameter budget is turned into a plan.</summary>
public enum SelectionScope
{
    /// <summary>One ranking across all groups: the scores must be comparable between groups (EcoDiff logits are).</summary>
    Global,

    /// <summary>Every group loses the same fraction of its units (up to rounding); scores rank units within a group only.</summary>
    PerLayer,

    /// <summary>
    /// Every unit type (ResNet channels, attention heads, feed-forward neurons) loses the same fraction of its units, and
    /// within a type the lowest scores go first whichever layer they are in (the official EcoDiff binarisation).
    /// </summary>
    PerType,
}

/// <summary>A selected plan and its exact parameter accounting.</summary>
/// <param name="RemovedParameters">Exactly what <see cref="StructuralSurgery.Apply"/> removes with this plan.</param>
/// <param name="TotalParameters">Parameters of the whole model before pruning.</param>
public sealed record PlanSelection(PruningPlan Plan, long RemovedParameters, long TotalParameters, double TargetRemovedFraction)
{
    public double AchievedRemovedFraction => TotalParameters == 0 ? 0 : RemovedParameters / (double)TotalParameters;
}

/// <summary>
/// Scores -> plan for a parameter budget: removes the lowest-scored units until the removed parameters
/// (exact, summed over every coupled tensor of each group) reach the target fraction of the model.
/// Shared by EcoDiff and the baselines, so every method is compared at the same real parameter count.
/// </summary>
public static class PlanSelector
{
    /// <summary>
    /// The plan that removes at least <paramref name="targetRemovedFraction"/> of the model's parameters, overshooting by
    /// less than one removal step (one unit, or one channel per GroupNorm group for a ResNet block).
    /// Groups without scores are left whole; every scored group keeps at least max(1, ceil(minKeepFraction·units))
    /// units, rounded up to a count valid for its GroupNorm. Throws <see cref="PruningPlanException"/> for a target
    /// outside (0, 1) or beyond what the structure allows (the message gives the maximum reachable fraction).
    /// </summary>
    public static PruningPlan SelectForParameterTarget(PrunableGroups groups, UnitScores scores, double targetRemovedFraction,
        SelectionScope scope = SelectionScope.Global, double minKeepFraction = 0.1) =>
        Select(groups, scores, targetRemovedFraction, scope, minKeepFraction).Plan;

    /// <summary><see cref="SelectForParameterTarget"/> with the achieved fraction and exact counts.</summary>
    /// <param name="roundTo">Kept widths of ResNet channels and feed-forward neurons become multiples of this (1: any width).</param>
    public static PlanSelection Select(PrunableGroups groups, UnitScores scores, double targetRemovedFraction,
        SelectionScope scope = SelectionScope.Global, double minKeepFraction = 0.1, int roundTo = 1)
    {
        ArgumentNullException.ThrowIfNull(groups);
        ArgumentNullException.ThrowIfNull(scores);
        if (double.IsNaN(targetRemovedFraction) || targetRemovedFraction <= 0 || targetRemovedFraction >= 1)
            throw new PruningPlanException(
                $"The target fraction of parameters to remove must lie strictly between 0 and 1 (got {targetRemovedFraction}); e.g. 0.2 removes 20%.");
        if (double.IsNaN(minKeepFraction) || minKeepFraction < 0 || minKeepFraction > 1)
            throw new PruningPlanException($"The minimum kept fraction per layer must lie in [0, 1] (got {minKeepFraction}).");
        if (roundTo < 1)
            throw new PruningPlanException($"Kept widths are rounded to multiples of a whole number of at least 1 (got {roundTo}).");

        long total = groups.Model.ParameterCount();
        long needed = (long)Math.Ceiling(targetRemovedFraction * total);

        // 1. each scored group as a sequence of removal steps, lowest scores first.
        var candidates = new List<Candidate>();
        foreach (var (path, values) in scores.ByGroup)
        {
            var group = groups.Unit(path) ?? throw new PruningPlanException(
                $"The scores name '{path}', which is not a prunable unit group of this model.");
            if (values.Length != group.Units)
                throw new PruningPlanException($"Group '{path}' has {group.Units} units but {values.Length} scores were given.");
            if (values.Any(float.IsNaN))
                throw new PruningPlanException($"The scores of group '{path}' contain NaN; the importance criterion failed.");
            candidates.Add(new Candidate(group, values, MinimumKeep(group, minKeepFraction), roundTo));
        }

        ThrowIfUnreachable(candidates, needed, total, targetRemovedFraction, minKeepFraction, roundTo, null);

        // 2. greedy: take the cheapest next step until the budget is met.
        var typeUnits = candidates.GroupBy(c => c.Type).ToDictionary(t => t.Key, t => (double)t.Sum(c => c.Group.Units));
        var typeRemoved = typeUnits.Keys.ToDictionary(t => t, _ => 0.0);
        long removed = 0;
        while (removed < needed)
        {
            Candidate? best = null;
            foreach (var c in candidates)
            {
                if (!c.CanStep) continue;
                if (best is null || Compare(c, best, scope, typeUnits, typeRemoved) < 0) best = c;
            }
            if (best is null) break; // cannot happen: reachable >= needed
            int before = best.Keep;
            removed += best.Step();
            typeRemoved[best.Type] += before - best.Keep;
        }

        // 3. the plan: the top-scored units of each narrowed group (KeepTop keeps GroupNorm groups even).
        var plan = new PruningPlan();
        foreach (var c in candidates.Where(c => c.Keep < c.Group.Units))
            plan.Keep[c.Group.Path] = c.Group.KeepTop(c.Scores, c.Keep);
        long exact = StructuralSurgery.RemovedParameters(groups, plan);
        if (exact != removed)
            throw new InvalidOperationException($"Parameter accounting mismatch: the selection counted {removed} removed parameters, the surgery {exact}.");
        return new PlanSelection(plan, exact, total, targetRemovedFraction);
    }

    /// <summary>
    /// Refuses, before any scoring is paid for, a target that the groups a criterion will score cannot reach — the same
    /// refusal <see cref="Select"/> gives after scoring (e.g. an EcoDiff run that gates only heads and feed-forward
    /// neurons, on a U-Net whose parameters sit in its ResNet channels). <paramref name="scoredOnly"/> says in the
    /// message which groups were counted (null: all of them).
    /// </summary>
    public static void CheckReachable(PrunableGroups groups, IEnumerable<UnitGroup> scored, double targetRemovedFraction, double minKeepFraction = 0.1,
        int roundTo = 1, string? scoredOnly = null)
    {
        ArgumentNullException.ThrowIfNull(groups);
        ArgumentNullException.ThrowIfNull(scored);
        if (double.IsNaN(targetRemovedFraction) || targetRemovedFraction <= 0 || targetRemovedFraction >= 1) return; // Select says why
        long total = groups.Model.ParameterCount();
        var candidates = scored.Select(g => new Candidate(g, new float[g.Units], MinimumKeep(g, minKeepFraction), Math.Max(1, roundTo))).ToList();
        ThrowIfUnreachable(candidates, (long)Math.Ceiling(targetRemovedFraction * total), total, targetRemovedFraction, minKeepFraction, roundTo, scoredOnly);
    }

    private static void ThrowIfUnreachable(List<Candidate> candidates, long needed, long total, double targetRemovedFraction, double minKeepFraction,
        int roundTo, string? scoredOnly)
    {
        long reachable = candidates.Sum(c => c.MaxRemovableParameters);
        if (needed > reachable)
            throw new PruningPlanException(
                $"Removing {targetRemovedFraction:P1} of the parameters ({needed:N0} of {total:N0}) is not possible: keeping at least " +
                $"{minKeepFraction:P0} of every layer's units (and whole GroupNorm groups) allows at most {reachable / (double)total:P2} " +
                $"({reachable:N0}){(roundTo > 1 ? $" with widths rounded to multiples of {roundTo}" : "")}" +
                $"{(scoredOnly is null ? "" : $" when only {scoredOnly} are pruned")}. Lower the target or the per-layer minimum" +
                $"{(scoredOnly is null ? "" : ", or prune more unit types")}.");
    }

    /// <summary>The fewest units <paramref name="group"/> may keep: max(1, ceil(fraction·units)), rounded up to a valid count.</summary>
    public static int MinimumKeep(UnitGroup group, double minKeepFraction)
    {
        int desired = Math.Max(1, (int)Math.Ceiling(minKeepFraction * group.Units - 1e-9));
        for (int d = desired; d <= group.Units; d++)
        {
            int valid = group.ValidKeepCount(d);
            if (valid >= desired) return valid;
        }
        return group.Units;
    }

    // Global: the lowest next-step score first. PerLayer: the group whose removed fraction would stay lowest, then score.
    // PerType: the unit type whose removed fraction would stay lowest, then score.
    private static int Compare(Candidate a, Candidate b, SelectionScope scope, Dictionary<EcoDiffUnitTypes, double> typeUnits,
        Dictionary<EcoDiffUnitTypes, double> typeRemoved)
    {
        if (scope == SelectionScope.PerLayer)
        {
            int byFraction = a.FractionAfterStep.CompareTo(b.FractionAfterStep);
            if (byFraction != 0) return byFraction;
        }
        else if (scope == SelectionScope.PerType && a.Type != b.Type)
        {
            double after(Candidate c) => (typeRemoved[c.Type] + c.UnitsInStep) / typeUnits[c.Type];
            int byFraction = after(a).CompareTo(after(b));
            if (byFraction != 0) return byFraction;
        }
        int byScore = a.NextScore.CompareTo(b.NextScore);
        return byScore != 0 ? byScore : string.CompareOrdinal(a.Group.Path, b.Group.Path);
    }

    /// <summary>
    /// A group being narrowed. An atomic step removes one unit, or for a ResNet block the next-lowest channel of every
    /// GroupNorm group at once (the only way to stay valid). With a width rounding R, a step runs atomic steps until the
    /// kept width is a multiple of R again; a step's score is the mean of the scores it removes.
    /// </summary>
    private sealed class Candidate
    {
        private readonly double[] _atomicScores;
        private readonly int[] _keeps; // the kept widths this group may stop at, descending from its full width
        private int _step;

        public Candidate(UnitGroup group, float[] scores, int minimumKeep, int roundTo)
        {
            Group = group;
            Type = EcoDiffObjective.UnitType(group);
            Scores = scores;
            MinimumKeep = minimumKeep;
            int unitsPerStep;
            if (group is ResnetChannelGroup resnet)
            {
                int width = resnet.ChannelsPerNormGroup, normGroups = resnet.NormGroups;
                // per norm group, its channels' scores ascending; step k removes the k-th lowest of each.
                var ascending = Enumerable.Range(0, normGroups)
                    .Select(g => Enumerable.Range(g * width, width).Select(i => (double)scores[i]).Order().ToArray()).ToArray();
                _atomicScores = Enumerable.Range(0, width).Select(k => ascending.Average(a => a[k])).ToArray();
                unitsPerStep = normGroups;
            }
            else
            {
                _atomicScores = scores.Select(s => (double)s).Order().ToArray();
                unitsPerStep = 1;
            }
            UnitsPerAtomicStep = unitsPerStep;
            int round = RoundsWidth(group) ? roundTo : 1;
            var keeps = new List<int> { group.Units };
            for (int keep = group.Units - unitsPerStep; keep >= minimumKeep && keep >= 1; keep -= unitsPerStep)
                if (keep % round == 0) keeps.Add(keep);
            _keeps = keeps.ToArray();
        }

        /// <summary>Widths of heads are already multiples of the head size; rounding applies to channels and neurons.</summary>
        private static bool RoundsWidth(UnitGroup group) => group is ResnetChannelGroup or FeedForwardGroup or GegluFeedForwardGroup;

        private int UnitsPerAtomicStep { get; }
        public UnitGroup Group { get; }
        public float[] Scores { get; }
        public int MinimumKeep { get; }
        public int Keep => _keeps[_step];

        public bool CanStep => _step + 1 < _keeps.Length;
        public double NextScore
        {
            get
            {
                int first = (Group.Units - _keeps[_step]) / UnitsPerAtomicStep, last = (Group.Units - _keeps[_step + 1]) / UnitsPerAtomicStep;
                return _atomicScores[first..last].Average();
            }
        }

        public double FractionAfterStep => 1.0 - _keeps[_step + 1] / (double)Group.Units;

        /// <summary>Units the next step removes.</summary>
        public int UnitsInStep => _keeps[_step] - _keeps[_step + 1];

        /// <summary>The group's unit type (per-type selection ranks within it).</summary>
        public EcoDiffUnitTypes Type { get; }
        public long MaxRemovableParameters => Group.ParametersPerUnit * (Group.Units - _keeps[^1]);

        public long Step()
        {
            long removed = Group.ParametersPerUnit * (_keeps[_step] - _keeps[_step + 1]);
            _step++;
            return removed;
        }
    }
}
