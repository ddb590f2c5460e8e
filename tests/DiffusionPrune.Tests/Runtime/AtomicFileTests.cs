using DiffusionPrune.Runtime;

namespace DiffusionPrune.Tests.Runtime;

public class AtomicFileTests
{
    [Fact]
    public void A_file_is_published_only_under_a_free_name_and_the_winner_of_a_race_is_unique()
    {
        using var temp = Fixtures.Temp();
        string target = temp.File("target");
        for (int round = 0; round < 30; round++)
        {
            File.Delete(target);
            using var start = new Barrier(6);
            var won = new bool[6];
            var threads = Enumerable.Range(0, 6).Select(t => new Thread(() =>
            {
                string mine = temp.File($"candidate-{t}");
                File.WriteAllText(mine, $"writer {t}");
                start.SignalAndWait();
                won[t] = AtomicFile.TryPublish(mine, target);
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
            int winner = Assert.Single(Enumerable.Range(0, 6), t => won[t]);
            Assert.Equal($"writer {winner}", File.ReadAllText(target)); // whole, and the winner's
            Assert.False(File.Exists(temp.File($"candidate-{winner}")));            // the winner's source is gone
            foreach (var loser in Enumerable.Range(0, 6).Where(t => t != winner))
            {
                Assert.True(File.Exists(temp.File($"candidate-{loser}")));          // a loser keeps its file
                File.Delete(temp.File($"candidate-{loser}"));
            }
        }
    }

    [Fact]
    public void Replace_writes_whole_files_over_old_ones_and_leaves_no_temporary_behind()
    {
        using var temp = Fixtures.Temp();
        string path = temp.File("report.json");
        AtomicFile.Replace(path, "first");
        AtomicFile.Replace(path, "second, longer");
        Assert.Equal("second, longer", File.ReadAllText(path));
        AtomicFile.Replace(path, new byte[] { 1, 2, 3 });
        Assert.Equal(new byte[] { 1, 2, 3 }, File.ReadAllBytes(path));
        Assert.Equal([path], Directory.GetFiles(temp.Path));
        Assert.ThrowsAny<IOException>(() => AtomicFile.Replace(temp.File(Path.Combine("missing", "x.json")), "x"));
        Assert.Equal([path], Directory.GetFiles(temp.Path));
    }
}
