namespace DiffusionPrune.Data;

/// <summary>
/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny seeded generator whose output is fixed by its
/// definition, so a shuffle made with it is the same on every machine and every .NET version —
/// which the MNIST split and batch orders promise.
/// </summary>
internal struct SplitMix64(ulong seed)
{
    private ulong _state = seed;

    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>An integer in [0, <paramref name="bound"/>): the high word of a 64×64-bit product (bias below bound/2^64).</summary>
    public int NextInt(int bound)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bound);
        return (int)Math.BigMul(Next(), (ulong)bound, out _);
    }

    /// <summary>Fisher–Yates shuffle in place, from the last element down.</summary>
    public void Shuffle<T>(Span<T> items)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            int j = NextInt(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }
}
