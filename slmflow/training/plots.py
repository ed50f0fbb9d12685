"""The loss curve of a fine-tune, drawn off-screen to PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from slmflow.evaluation.plots import off_screen_figure


def plot_loss_curve(history: Sequence[dict], held_out_loss: float | None, path: Path) -> None:
    """Training loss per logged step, and the held-out loss at the end as a point."""
    points = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    with off_screen_figure(path, (7, 4)) as axis:
        axis.plot([step for step, _ in points], [loss for _, loss in points], marker=".", label="training loss")
        if held_out_loss is not None and points:
            axis.scatter([points[-1][0]], [held_out_loss], color="tab:red", zorder=3, label="held-out loss")
        axis.set_xlabel("step")
        axis.set_ylabel("loss (assistant tokens)")
        axis.set_title("Fine-tune loss")
        axis.legend()
