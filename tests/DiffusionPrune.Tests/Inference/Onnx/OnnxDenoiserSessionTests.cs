using System.Text.Json.Nodes;
using DiffusionPrune.Formats;
using DiffusionPrune.Inference.Onnx;

namespace DiffusionPrune.Tests.Inference.Onnx;

public class OnnxDenoiserSessionTests
{
    private static float[] Ramp(int count, float start = -1f, float step = 0.01f) =>
        Enumerable.Range(0, count).Select(i => start + i * step).ToArray();

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Predict_computes_the_graph_for_any_batch_size(int batch)
    {
        using var temp = Fixtures.Temp();
        var tiny = new TinyOnnxBundle { Channels = 2, Size = 4 };
        using var session = OnnxDenoiserSession.Open(tiny.WriteTo(temp.Path), "cpu");
        int perImage = 2 * 4 * 4;
        var sample = Ramp(batch * perImage);
        long[] timesteps = Enumerable.Range(0, batch).Select(b => 100L + 250 * b).ToArray();

        var prediction = session.Predict(sample, [batch, 2, 4, 4], timesteps);

        Assert.Equal(sample.Length, prediction.Length);
        for (int i = 0; i < sample.Length; i++)
            Assert.Equal(tiny.Expected(sample[i], timesteps[i / perImage]), prediction[i], 1e-6f);
    }

    [Fact]
    public void One_timestep_is_broadcast_over_the_batch()
    {
        using var temp = Fixtures.Temp();
        var tiny = new TinyOnnxBundle();
        using var session = OnnxDenoiserSession.Open(tiny.WriteTo(temp.Path), "cpu");
        var sample = Ramp(2 * 64);
        var prediction = session.Predict(sample, [2, 1, 8, 8], [500]);
        for (int i = 0; i < sample.Length; i++)
            Assert.Equal(tiny.Expected(sample[i], 500), prediction[i], 1e-6f);
    }

    [Fact]
    public void Learned_sigma_channels_are_dropped_as_DiffusionModel_Predict_does()
    {
        using var temp = Fixtures.Temp();
        var tiny = new TinyOnnxBundle { Channels = 2, Size = 4, SigmaChannels = 2 };
        using var session = OnnxDenoiserSession.Open(tiny.WriteTo(temp.Path), "cpu");
        Assert.True(session.Model.LearnedSigma);
        Assert.Equal(4, session.Model.OutChannels);
        var sample = Ramp(3 * 32);

        var prediction = session.Predict(sample, [3, 2, 4, 4], [10, 20, 30]);

        Assert.Equal(sample.Length, prediction.Length);
        Assert.DoesNotContain(TinyOnnxBundle.SigmaValue, prediction);
        for (int i = 0; i < sample.Length; i++)
            Assert.Equal(tiny.Expected(sample[i], 10 * (i / 32 + 1)), prediction[i], 1e-6f);
    }

    [Fact]
    public void Class_labels_feed_a_class_conditional_graph_and_are_required_there()
    {
        using var temp = Fixtures.Temp();
        var tiny = new TinyOnnxBundle { NumClasses = 10, NullClass = 10 };
        using var session = OnnxDenoiserSession.Open(tiny.WriteTo(temp.Path), "cpu");
        Assert.Equal(10, session.Model.NumClasses);
        Assert.Equal(10, session.Model.NullClass);
        var sample = Ramp(2 * 64);

        var prediction = session.Predict(sample, [2, 1, 8, 8], [7, 7], [3, 10]);

        for (int i = 0; i < sample.Length; i++)
            Assert.Equal(tiny.Expected(sample[i], 7, i < 64 ? 3 : 10), prediction[i], 1e-6f);
        var error = Assert.Throws<ArgumentException>(() => session.Predict(sample, [2, 1, 8, 8], [7, 7]));
        Assert.Contains("class-conditional", error.Message);
    }

    [Fact]
    public void A_sample_of_the_wrong_shape_is_refused_before_running()
    {
        using var temp = Fixtures.Temp();
        using var session = OnnxDenoiserSession.Open(new TinyOnnxBundle().WriteTo(temp.Path), "cpu");
        Assert.Throws<ArgumentException>(() => session.Predict(new float[64], [1, 2, 8, 4], [1]));
        Assert.Throws<ArgumentException>(() => session.Predict(new float[63], [1, 1, 8, 8], [1]));
        Assert.Throws<ArgumentException>(() => session.Predict(new float[128], [2, 1, 8, 8], [1, 2, 3]));
    }

    [Fact]
    public void A_folder_without_model_onnx_says_to_run_dprune_export()
    {
        using var temp = Fixtures.Temp();
        File.WriteAllText(temp.File("config.json"), "{}");
        var error = Assert.Throws<FileNotFoundException>(() => OnnxDenoiserSession.Open(temp.Path, "cpu"));
        Assert.Contains("model.onnx", error.Message);
        Assert.Contains("onnx_model.json", error.Message);
        Assert.Contains("dprune export", error.Message);
    }

    [Fact]
    public void Metadata_that_disagrees_with_the_graph_is_refused()
    {
        using var temp = Fixtures.Temp();
        string folder = new TinyOnnxBundle().WriteTo(temp.Path);
        var info = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, ModelFolder.OnnxInfo)))!.AsObject();
        info["num_classes"] = 10;
        File.WriteAllText(Path.Combine(folder, ModelFolder.OnnxInfo), info.ToJsonString());
        var error = Assert.Throws<InvalidDataException>(() => OnnxDenoiserSession.Open(folder, "cpu"));
        Assert.Contains("class_labels", error.Message);
    }

    [Fact]
    public void A_corrupt_model_onnx_is_a_clear_error()
    {
        using var temp = Fixtures.Temp();
        string folder = new TinyOnnxBundle().WriteTo(temp.Path);
        File.WriteAllText(Path.Combine(folder, ModelFolder.OnnxModel), "not a protobuf");
        var error = Assert.Throws<InvalidDataException>(() => OnnxDenoiserSession.Open(folder, "cpu"));
        Assert.Contains("export the model again", error.Message);
    }

    [Fact]
    public void Model_info_reads_back_what_it_writes()
    {
        var written = new TinyOnnxBundle { Channels = 4, Size = 16, NumClasses = 1000, NullClass = 1000, SigmaChannels = 4 }.Info() with
        {
            SampleSize = [16, 24],
            Parameters = 12345678901,
            Pruned = true,
        };

        var read = OnnxModelInfo.Parse(written.ToJsonString());

        Assert.Equal(written.ToJsonString(), read.ToJsonString());
        Assert.Equal(["sample", "timestep", "class_labels"], read.InputNames);
        Assert.Equal(["batch", "4", "16", "16"], read.Inputs[0].Shape.Select(d => d.ToString()));
        Assert.Equal("int64", read.Inputs[1].DType);
        Assert.Equal([16, 24], read.SampleSize);
        Assert.True(read.LearnedSigma);
        Assert.Equal(12345678901L, read.Parameters);
        Assert.Equal(1000, read.NullClass);
        Assert.Equal("TinyDenoiser", read.ClassName);
    }

    [Theory]
    [InlineData("in_channels", null, "in_channels")]
    [InlineData("learned_sigma", null, "learned_sigma")]
    [InlineData("inputs", """["sample", "timestep"]""", "\"name\", \"dtype\" and \"shape\"")]
    [InlineData("sample_size", "8", "[height, width]")]
    [InlineData("out_channels", "3", "out_channels 3")]
    [InlineData("num_classes", null, "null_class 10 without num_classes")]
    public void Model_info_outside_the_exported_format_is_a_clear_error(string key, string? value, string message)
    {
        var json = System.Text.Json.Nodes.JsonNode.Parse(new TinyOnnxBundle { NumClasses = 10, NullClass = 10 }.Info().ToJsonString())!.AsObject();
        if (value is null) json.Remove(key);
        else json[key] = System.Text.Json.Nodes.JsonNode.Parse(value);

        var error = Assert.Throws<InvalidDataException>(() => OnnxModelInfo.Parse(json.ToJsonString()));

        Assert.Contains(message, error.Message);
    }
}
