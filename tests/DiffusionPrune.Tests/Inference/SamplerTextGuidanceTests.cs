using DiffusionPrune.Inference;
using DiffusionPrune.Schedulers;
using TorchSharp;
using static TorchSharp.torch;

namespace DiffusionPrune.Tests.Inference;

/// <summary>
/// DiffusionSampler's text guidance, with a stand-in denoiser whose answer shows what it was given: Stable Diffusion's
/// batch order [negative; prompt], uncond + g (cond - uncond), and no unconditional branch for g &lt;= 1.
/// </summary>
public sealed class SamplerTextGuidanceTests
{
    /// <summary>A denoiser answering sample + the mean of each row's text states, recording each call's batch.</summary>
    private static DiffusionSampler.DenoiseText Recording(List<long> batches) => (sample, timestep, states) =>
    {
        batches.Add(sample.shape[0]);
        return sample + states.mean([1, 2]).reshape(-1, 1, 1, 1);
    };

    [Fact]
    public void Text_guidance_puts_the_negative_states_first_and_combines_as_uncond_plus_g_times_the_difference()
    {
        using var scope = NewDisposeScope();
        var batches = new List<long>();
        var latents = zeros(2, 1, 2, 2);
        var prompt = full([2, 3, 4], 2.0f);
        var negative = full([2, 3, 4], -1.0f);

        var guided = DiffusionSampler.TextGuided(Recording(batches), latents, tensor(10L), new PromptEmbeddings(prompt, negative), 4.0);

        // uncond = -1, cond = 2: -1 + 4 * (2 - (-1)) = 11, from one call on the doubled batch.
        Assert.Equal(new long[] { 4 }, batches);
        Assert.True(guided.eq(11f).all().item<bool>());
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(0.5)]
    public void A_guidance_scale_of_at_most_one_runs_only_the_prompt_branch(double scale)
    {
        using var scope = NewDisposeScope();
        var batches = new List<long>();
        var latents = zeros(2, 1, 2, 2);

        var prediction = DiffusionSampler.TextGuided(Recording(batches), latents, tensor(10L), new PromptEmbeddings(full([2, 3, 4], 2.0f), null), scale);

        Assert.Equal(new long[] { 2 }, batches);
        Assert.True(prediction.eq(2f).all().item<bool>());
    }

    [Fact]
    public void Guided_text_sampling_without_negative_states_is_refused()
    {
        using var scope = NewDisposeScope();
        using var scheduler = Scheduler.Create(SchedulerConfig.Defaults(SchedulerConfig.DDIMClassName));
        var noise = randn(1, 1, 2, 2);

        var e = Assert.Throws<ArgumentException>(() => DiffusionSampler.Sample(Recording([]), new PromptEmbeddings(ones(1, 3, 4), null),
            scheduler, noise, new SampleOptions(2, 7.5)));
        Assert.Contains("negative prompt", e.Message);
    }

    [Fact]
    public void Text_sampling_refuses_embeddings_with_another_batch_than_the_noise()
    {
        using var scope = NewDisposeScope();
        using var scheduler = Scheduler.Create(SchedulerConfig.Defaults(SchedulerConfig.DDIMClassName));

        var e = Assert.Throws<ArgumentException>(() => DiffusionSampler.Sample(Recording([]), new PromptEmbeddings(ones(1, 3, 4), ones(1, 3, 4)),
            scheduler, randn(2, 1, 2, 2), new SampleOptions(2, 7.5)));
        Assert.Contains("one row per sample", e.Message);
    }
}
