return DiffusionPrune.Cli.DprunCli.Run(args);
