using DiffusionPrune.Runtime;

// The hidden child of the first run on a machine: the default kernels' check, printed as JSON (ChildKernelCheck).
if (args is ["__check-kernels"]) return ChildKernelCheck.RunAndPrint(Console.Out);

// First, before any tensor exists: on a machine whose kernel check failed (cached, or checked now in a child process
// when this machine has no decision yet), cap oneDNN's instruction set while that can still take effect
// (docs/PLATFORMS.md). `doctor` skips it, to check the default kernels afresh.
if (args is not ["doctor", ..])
    NumericsGuard.ApplyDefaultAtStartup(() => ChildKernelCheck.Run(ChildKernelCheck.Self("__check-kernels"), TimeSpan.FromMinutes(2)));
return DiffusionPrune.Cli.DprunCli.Run(args);
