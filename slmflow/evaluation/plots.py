"""Plots of an evaluation, drawn off-screen to PNG files."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slmflow.evaluation.metrics import ModelReport


@contextmanager
def off_screen_figure(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """A matplotlib axis drawn off-screen and saved as PNG on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=size)
    try:
        yield axis
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)


def plot_latency(reports: Sequence[ModelReport], path: Path) -> None:
    with off_screen_figure(path, (7, 4)) as axis:
        timed = [[r.latency_s * 1000 for r in report.results if r.latency_s is not None] for report in reports]
        axis.boxplot(timed, showmeans=True)
        axis.set_xticks(range(1, len(reports) + 1), [report.name for report in reports])
        axis.set_ylabel("latency per request (ms, lower is better)")
        axis.set_title("Latency distribution per model")


def plot_accuracy_vs_speed(reports: Sequence[ModelReport], path: Path) -> None:
    points = [(report.name, report.metrics()) for report in reports]
    with off_screen_figure(path, (6, 4)) as axis:
        for name, metrics in points:
            axis.scatter(metrics["tokens_per_second"], metrics["accuracy"], s=80)
            axis.annotate(
                f"{name}\n{metrics['accuracy']:.0%}, {metrics['tokens_per_second']:.0f} tok/s",
                (metrics["tokens_per_second"], metrics["accuracy"]),
                textcoords="offset points",
                xytext=(0, -28),
                ha="center",
                fontsize=8,
            )
        axis.set_xlabel("completion tokens / s (higher is better)")
        axis.set_ylabel("accuracy, contains answer (higher is better)")
        axis.set_ylim(-0.15, 1.1)
        axis.set_xlim(0, 1.25 * max(m["tokens_per_second"] for _, m in points) or 1)
        axis.set_title("Accuracy vs speed")


PLOTS = {"latency.png": plot_latency, "accuracy_vs_speed.png": plot_accuracy_vs_speed}


def write_plots(reports: Sequence[ModelReport], folder: Path) -> list[Path]:
    """Every plot of the evaluation, written into `folder`."""
    paths = []
    for filename, plot in PLOTS.items():
        plot(reports, folder / filename)
        paths.append(folder / filename)
    return paths
