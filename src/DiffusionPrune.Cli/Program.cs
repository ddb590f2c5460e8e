// First, before any tensor exists: on a machine whose kernel check failed before, cap oneDNN's instruction set while
// that can still take effect (docs/PLATFORMS.md). `doctor` skips it, to check the default kernels afresh.
if (args is not ["doctor", ..]) DiffusionPrune.Runtime.NumericsGuard.ApplyDefaultAtStartup();
return DiffusionPrune.Cli.DprunCli.Run(args);
