using System.Collections.Concurrent;

namespace DiffusionPrune.Pipeline;

/// <summary>
/// One long-lived worker thread that runs a pipeline's stages in turn, so every libtorch call of a session comes from
/// the same thread (one OpenMP team, one grad-mode state) while the caller stays free.
/// </summary>
internal sealed class StageThread : IDisposable
{
    private readonly BlockingCollection<Action> _queue = new();
    private readonly Thread _thread;

    public StageThread()
    {
        _thread = new Thread(() =>
        {
            foreach (var work in _queue.GetConsumingEnumerable()) work();
        })
        {
            IsBackground = true, // a face that exits without disposing is not held open
            Name = "dprune pipeline",
        };
        _thread.Start();
    }

    public Task<T> Run<T>(Func<T> work)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        _queue.Add(() =>
        {
            try
            {
                done.SetResult(work());
            }
            catch (OperationCanceledException e)
            {
                done.SetCanceled(e.CancellationToken);
            }
            catch (Exception e)
            {
                done.SetException(e);
            }
        });
        return done.Task;
    }

    public void Dispose()
    {
        _queue.CompleteAdding();
        if (Thread.CurrentThread != _thread) _thread.Join();
        _queue.Dispose();
    }
}
