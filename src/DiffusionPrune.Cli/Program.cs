System.Console.WriteLine(DiffusionPrune.Probe.Run());
