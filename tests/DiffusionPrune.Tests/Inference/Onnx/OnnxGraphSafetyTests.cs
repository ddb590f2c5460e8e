using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;
using Google.Protobuf;
using Onnx;

namespace DiffusionPrune.Tests.Inference.Onnx;

/// <summary>Crafted bundles: external data outside the folder, through links, too much of it, or no graph at all.</summary>
public class OnnxGraphSafetyTests
{
    /// <summary>A valid tiny bundle whose graph gains one initializer reading external data from <paramref name="location"/>.</summary>
    private static string Crafted(TempFolder temp, string location, long length = 16)
    {
        string bundle = new TinyOnnxBundle().WriteTo(temp.File("bundle"));
        string graph = Path.Combine(bundle, ModelFolder.OnnxModel);
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(graph));
        var tensor = new TensorProto { Name = "crafted", DataType = (int)TensorProto.Types.DataType.Float, DataLocation = TensorProto.Types.DataLocation.External };
        tensor.Dims.Add(length / 4);
        tensor.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        tensor.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        model.Graph.Initializer.Add(tensor);
        File.WriteAllBytes(graph, model.ToByteArray());
        return graph;
    }

    [Fact]
    public void A_plain_bundle_and_external_data_inside_its_folder_pass()
    {
        using var temp = Fixtures.Temp();
        OnnxGraphSafety.Check(Path.Combine(new TinyOnnxBundle().WriteTo(temp.File("plain")), ModelFolder.OnnxModel));
        string graph = Crafted(temp, "weights/data.bin");
        Directory.CreateDirectory(Path.Combine(temp.File("bundle"), "weights"));
        File.WriteAllBytes(Path.Combine(temp.File("bundle"), "weights", "data.bin"), new byte[16]);
        OnnxGraphSafety.Check(graph);
    }

    [Theory]
    [InlineData("../secret.bin")]
    [InlineData("weights/../../secret.bin")]
    [InlineData("/etc/passwd")]
    public void External_data_outside_the_bundle_folder_is_refused(string location)
    {
        using var temp = Fixtures.Temp();
        File.WriteAllBytes(temp.File("secret.bin"), new byte[16]);
        string graph = Crafted(temp, location);
        var error = Assert.Throws<InvalidDataException>(() => OnnxGraphSafety.Check(graph));
        Assert.Contains($"reads external data from '{location}', outside the bundle folder", error.Message);
        // and the session never opens it
        Assert.Throws<InvalidDataException>(() => OnnxDenoiserSession.Open(temp.File("bundle"), "cpu"));
    }

    [Fact]
    public void A_symbolic_link_out_of_the_bundle_is_refused()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllBytes(temp.File("secret.bin"), new byte[16]);
        string graph = Crafted(temp, "data.bin");
        File.CreateSymbolicLink(Path.Combine(temp.File("bundle"), "data.bin"), temp.File("secret.bin"));
        Assert.Contains("through the symbolic link", Assert.Throws<InvalidDataException>(() => OnnxGraphSafety.Check(graph)).Message);
    }

    [Fact]
    public void Too_many_weight_bytes_missing_data_and_garbage_graphs_are_refused_in_one_line()
    {
        using var temp = Fixtures.Temp();
        string graph = Crafted(temp, "data.bin", length: 4096);
        Assert.Contains("does not exist", Assert.Throws<InvalidDataException>(() => OnnxGraphSafety.Check(graph)).Message);
        File.WriteAllBytes(Path.Combine(temp.File("bundle"), "data.bin"), new byte[4096]);
        OnnxGraphSafety.Check(graph);
        Assert.Contains("more than 1,000 bytes of weights", Assert.Throws<InvalidDataException>(() => OnnxGraphSafety.Check(graph, maxInitializerBytes: 1000)).Message);

        File.WriteAllBytes(graph, [0xFF, 0xFF, 0xFF, 0x01, 0x02]);
        var error = Assert.Throws<InvalidDataException>(() => OnnxGraphSafety.Check(graph));
        Assert.Contains("is not an ONNX model", error.Message);
        Assert.DoesNotContain('\n', error.Message);
    }
}
