using System.Diagnostics;
using System.Text.Json;
using DiffusionPrune.Batch;
using DiffusionPrune.Tests.Cli;

namespace DiffusionPrune.Tests.Batch;

/// <summary>Claims on batch items: created once, held while the owner lives, taken over when it is gone.</summary>
public class ItemClaimTests
{
    [Fact]
    public void A_held_claim_is_not_granted_twice_and_is_free_again_once_released()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("item.claim");
        using (var first = ItemClaim.TryAcquire(path, TimeSpan.FromMinutes(5), out var none))
        {
            Assert.NotNull(first);
            Assert.Null(none);
            Assert.Null(ItemClaim.TryAcquire(path, TimeSpan.FromMinutes(5), out var owner));
            Assert.Equal(Environment.ProcessId, owner!.Pid);
        }
        Assert.False(File.Exists(path));
        using var again = ItemClaim.TryAcquire(path, TimeSpan.FromMinutes(5), out _);
        Assert.NotNull(again);
    }

    [Fact]
    public void Of_many_workers_racing_for_one_item_exactly_one_gets_it()
    {
        using var temp = Fixtures.Temp();
        for (int round = 0; round < 30; round++)
        {
            string path = temp.File($"item{round}.claim");
            using var start = new Barrier(8);
            var claims = new ItemClaim?[8];
            var threads = Enumerable.Range(0, 8).Select(t => new Thread(() =>
            {
                start.SignalAndWait();
                claims[t] = ItemClaim.TryAcquire(path, TimeSpan.FromMinutes(5), out _);
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
            Assert.Single(claims, c => c is not null);
            foreach (var claim in claims) claim?.Dispose();
            Assert.Empty(Directory.GetFiles(temp.Path, "*.tmp")); // no temporary left behind by the losers
        }
    }

    [Fact]
    public void A_claim_of_a_process_of_this_host_that_is_gone_is_taken_over()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("item.claim");
        using var gone = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        gone.WaitForExit();
        var dead = new ItemClaim.Owner(Environment.MachineName, gone.Id, DateTime.UtcNow.AddSeconds(-5), "dead", DateTime.UtcNow);
        File.WriteAllText(path, JsonSerializer.Serialize(dead));

        using var claim = ItemClaim.TryAcquire(path, TimeSpan.FromHours(1), out _); // the lease has not run out: the pid check decides
        Assert.NotNull(claim);
        Assert.Equal(Environment.ProcessId, ItemClaim.Read(path)!.Pid);
    }

    [Fact]
    public void A_claim_from_another_host_holds_until_its_lease_runs_out()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("item.claim");
        var remote = new ItemClaim.Owner("another-host", 1, DateTime.UtcNow, "remote", DateTime.UtcNow);
        File.WriteAllText(path, JsonSerializer.Serialize(remote));

        Assert.Null(ItemClaim.TryAcquire(path, TimeSpan.FromMinutes(5), out var owner)); // refreshed just now
        Assert.Equal("another-host", owner!.Host);

        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(-10)); // its owner stopped refreshing it
        using var claim = ItemClaim.TryAcquire(path, TimeSpan.FromMinutes(5), out _);
        Assert.NotNull(claim);
    }

    [Fact]
    public void The_owner_refreshes_its_claim_while_it_works()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("item.claim");
        using var claim = ItemClaim.TryAcquire(path, TimeSpan.FromSeconds(4), out _); // refreshed every second
        Assert.NotNull(claim);
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddMinutes(-10));
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (DateTime.UtcNow - File.GetLastWriteTimeUtc(path) > TimeSpan.FromMinutes(1) && DateTime.UtcNow < deadline) Thread.Sleep(100);
        Assert.True(DateTime.UtcNow - File.GetLastWriteTimeUtc(path) < TimeSpan.FromMinutes(1), "the claim was not refreshed");
    }

    [Fact]
    public void Shards_split_the_items_so_each_runs_exactly_once()
    {
        Assert.Equal(new BatchShard(2, 4), BatchShard.Parse("2/4"));
        foreach (var bad in new[] { "0/4", "5/4", "2", "a/b", "1/0", "-1/2" })
            Assert.Throws<BatchPlanException>(() => BatchShard.Parse(bad));
        var shards = Enumerable.Range(1, 3).Select(i => new BatchShard(i, 3)).ToList();
        for (int item = 0; item < 10; item++)
            Assert.Single(shards, s => s.Contains(item));
    }
}

/// <summary>Two shards as separate processes on one output folder, one killed mid-item and restarted, then --summarize.</summary>
public class ShardProcessTests
{
    private static Process StartBatch(params string[] args) => Process.Start(CliTests.DprunStartInfo(["batch", .. args]))!;

    private static (int Code, string Out) Finish(Process process)
    {
        using (process)
        {
            var (code, stdout, stderr) = CliTests.Finish(process, TimeSpan.FromMinutes(5));
            return (code, stdout + stderr);
        }
    }

    [Fact]
    public void Two_shards_one_killed_mid_item_and_restarted_finish_every_item_once()
    {
        using var temp = Fixtures.Temp();
        var (planPath, _) = BatchRunnerTests.TinyPlan(temp.Path);
        var plan = BatchPlan.Load(planPath);
        var items = plan.Items(); // original, magnitude, random: shard 1/2 has items 1 and 3, shard 2/2 item 2
        Assert.Equal(3, items.Count);

        // Shard 1 starts and is killed while it holds its first item's claim (before that item's marker exists).
        using var victim = StartBatch(planPath, "--shard", "1/2");
        _ = victim.StandardOutput.ReadToEndAsync();
        _ = victim.StandardError.ReadToEndAsync();
        string firstClaim = BatchRunner.ClaimPath(plan, items[0]);
        var deadline = DateTime.UtcNow.AddMinutes(3);
        while (!File.Exists(firstClaim) && !victim.HasExited && DateTime.UtcNow < deadline) Thread.Sleep(50);
        Assert.True(File.Exists(firstClaim), "shard 1 never claimed its first item");
        victim.Kill(entireProcessTree: true);
        victim.WaitForExit();
        Assert.Null(BatchRunner.ReadItem(plan.FolderOf(items[0]))); // killed mid-item: no marker
        Assert.True(File.Exists(firstClaim));                        // and its claim is left behind

        // Summarizing too early says which items are missing and what to do.
        var (codeEarly, outEarly) = Finish(StartBatch(planPath, "--summarize"));
        Assert.Equal(1, codeEarly);
        Assert.Contains("3 item(s) are not finished yet: tiny-unet original, tiny-unet magnitude 20%, tiny-unet random 20%; run the shards", outEarly);
        File.Delete(Path.Combine(plan.Output, BatchSummary.MarkdownName)); // (it still wrote what there is; shards must not)

        // Shard 2 runs alongside the restarted shard 1, which takes over its own abandoned claim.
        var second = StartBatch(planPath, "--shard", "2/2");
        var restarted = StartBatch(planPath, "--shard", "1/2");
        var (code2, out2) = Finish(second);
        var (code1, out1) = Finish(restarted);
        Assert.True(code2 == 0, out2);
        Assert.True(code1 == 0, out1);
        Assert.Contains("shard 1/2: 2 item(s) run", out1);
        Assert.Contains("shard 2/2: 1 item(s) run", out2);
        Assert.DoesNotContain("tiny-unet magnitude 20%", out1); // each shard ran only its share
        Assert.DoesNotContain("tiny-unet original", out2);
        foreach (var item in items)
        {
            Assert.NotNull(BatchRunner.ReadItem(plan.FolderOf(item)));
            Assert.False(File.Exists(BatchRunner.ClaimPath(plan, item)), $"{item}'s claim was not released");
        }
        Assert.False(File.Exists(Path.Combine(plan.Output, BatchSummary.MarkdownName))); // shards leave the summary

        // Overlapping workers (the same shard twice, or a restart while the first still runs) skip what is finished.
        var (codeAgain, outAgain) = Finish(StartBatch(planPath, "--shard", "1/2"));
        Assert.True(codeAgain == 0, outAgain);
        Assert.Contains("shard 1/2: 0 item(s) run, 2 skipped as finished", outAgain);

        var (codeSummary, outSummary) = Finish(StartBatch(planPath, "--summarize"));
        Assert.True(codeSummary == 0, outSummary);
        Assert.Contains("3 finished item(s), 0 unfinished", outSummary);
        Assert.Contains("3 of 3 items finished", File.ReadAllText(Path.Combine(plan.Output, BatchSummary.MarkdownName)));
    }
}
