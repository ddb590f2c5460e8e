System.Console.WriteLine("dprune");
