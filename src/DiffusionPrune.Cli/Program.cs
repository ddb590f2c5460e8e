// Placeholder entry point: the skeleton referenced a DiffusionPrune.Probe class that is not in the
// repository, which kept every project referencing the CLI (the tests) from building.
System.Console.WriteLine($"dprune (TorchSharp {typeof(TorchSharp.torch).Assembly.GetName().Version})");
