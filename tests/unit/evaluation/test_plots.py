from slmflow.evaluation.metrics import ExampleResult, ModelReport
from slmflow.evaluation.plots import PLOTS, write_plots


def report(name: str, latency: float) -> ModelReport:
    results = [ExampleResult("a", latency * (i + 1), 4, i % 2 == 0, False, 0.5) for i in range(4)]
    return ModelReport(name, f"models:/m-{name}", 1.0, 100.0, 2.0, results)


def test_every_plot_is_written_as_a_png(tmp_path):
    paths = write_plots([report("fast", 0.01), report("slow", 0.2)], tmp_path)
    assert [path.name for path in paths] == list(PLOTS)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_with_zero_throughput_still_plots(tmp_path):
    silent = ModelReport("silent", "models:/m-silent", 1.0, 100.0, 2.0, [ExampleResult("", 0.0, 0, False, False, 0.0)])
    assert all(path.exists() for path in write_plots([silent], tmp_path))
