"""What a person sees first in the MLflow UI: run names, the experiment's kind, and the pipeline run's note."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from slmflow import tags
from slmflow.evaluation.reporting import PLOTS_DIR

SUMMARY_METRICS = (
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "exact_match",
    "rouge_l",
    "tokens_per_second",
    "latency_p50_s",
    "latency_p95_s",
    "ttft_p50_s",
    "peak_rss_mb",
    "size_mb",
)


def pipeline_run_name(config_arg: str) -> str:
    """`pipeline tiny` for configs/tiny.yaml."""
    return f"pipeline {Path(config_arg).stem}"


def describe_experiment(client: MlflowClient, experiment_id: str, config_arg: str) -> None:
    """Tag the experiment so the UI opens it for model development, and say what it holds."""
    # Opens the experiment as model development runs, not MLflow's GenAI view.
    client.set_experiment_tag(experiment_id, tags.EXPERIMENT_KIND, tags.EXPERIMENT_KIND_MODEL_DEVELOPMENT)
    client.set_experiment_tag(experiment_id, tags.EXPERIMENT_CONFIG, config_arg)
    client.set_experiment_tag(
        experiment_id,
        tags.NOTE,
        "slmflow pipeline runs: each `pipeline <config>` run has one child run per step (fetch_model, "
        "log_onnx_wrapper, log_transformers_pipeline, evaluate, register); its note says what was registered "
        "and why. Compare the two chat flavors on the Models tab; every eval example is in the evaluate run's "
        "Traces tab.",
    )


def metrics_table(metrics_by_model: Mapping[str, Mapping[str, float]]) -> str:
    models = list(metrics_by_model)
    lines = ["| metric | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for key in SUMMARY_METRICS:
        if any(key in metrics for metrics in metrics_by_model.values()):
            cells = [f"{metrics_by_model[m][key]:.4g}" if key in metrics_by_model[m] else "" for m in models]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _with_interval(comparisons: Mapping[str, float], name: str) -> str:
    return f"{comparisons[name]:+.3f} [{comparisons[name + '_ci_low']:+.3f}, {comparisons[name + '_ci_high']:+.3f}]"


def comparisons_table(comparisons: Mapping[str, float]) -> str:
    """The paired comparisons (`<pair>/<statistic>`): accuracy difference and latency ratio with intervals."""
    lines = [
        "| paired comparison | accuracy difference [interval] | McNemar p | median latency ratio [interval] |",
        "|---|---|---|---|",
    ]
    for pair in sorted({key.split("/")[0] for key in comparisons}):
        accuracy = _with_interval(comparisons, f"{pair}/accuracy")
        latency = _with_interval(comparisons, f"{pair}/latency_ratio")
        lines.append(f"| {pair} | {accuracy} | {comparisons[f'{pair}/mcnemar_p']:.3g} | {latency} |")
    return "\n".join(lines)


def summary_markdown(
    title: str,
    metrics_by_model: Mapping[str, Mapping[str, float]],
    decision: str,
    steps: Mapping[str, bool],
) -> str:
    """The parent run's note: the decision and why, the key metrics side by side, the steps."""
    parts = [f"## {title}", decision]
    comparisons = metrics_by_model.get(tags.DELTA_PREFIX.rstrip("/"), {})
    models = {name: metrics for name, metrics in metrics_by_model.items() if metrics is not comparisons}
    if models:
        parts.append(metrics_table(models))
    if comparisons:
        parts.append(comparisons_table(comparisons))
    if steps:
        states = (f"{step} ({'reused' if reused else 'ran'})" for step, reused in steps.items())
        parts.append("Steps: " + ", ".join(states))
    if metrics_by_model:
        parts.append(f"Plots: `{PLOTS_DIR}/` in this run's artifacts; every example in the evaluate run's Traces tab.")
    return "\n\n".join(parts)


def evaluated_metrics(evaluate_run) -> dict[str, dict[str, float]]:
    """The evaluate run's `<model>/<metric>` metrics, grouped by model."""
    grouped: dict[str, dict[str, float]] = {}
    for key, value in evaluate_run.data.metrics.items():
        model, _, metric = key.partition("/")
        if metric:
            grouped.setdefault(model, {})[metric] = value
    return grouped


def step_runs(parent) -> tuple[dict[str, str], dict[str, bool]]:
    """The child run id and whether it was reused, per step, as the runner recorded them on the parent."""
    recorded = tags.steps_recorded(parent.data.tags)
    return {step: run_id for step, (run_id, _) in recorded.items()}, {step: c for step, (_, c) in recorded.items()}


def record_summary(
    client: MlflowClient,
    parent_run_id: str,
    title: str,
    registered: tuple[str, str] | None = None,
    failure: str | None = None,
) -> str:
    """Write the parent run's note from what its steps recorded, and attach the evaluation plots to it."""
    parent = client.get_run(parent_run_id)
    run_ids, cached = step_runs(parent)
    metrics_by_model: dict[str, dict[str, float]] = {}
    if "evaluate" in run_ids:
        metrics_by_model = evaluated_metrics(client.get_run(run_ids["evaluate"]))
        with tempfile.TemporaryDirectory() as folder:
            plots = mlflow.artifacts.download_artifacts(
                run_id=run_ids["evaluate"], artifact_path=PLOTS_DIR, dst_path=folder
            )
            client.log_artifacts(parent_run_id, plots, PLOTS_DIR)
    if registered is not None:
        name, number = registered
        version = client.get_model_version(name, number)
        aliases = ", ".join(f"`{alias}`" for alias in version.aliases) or "no alias"
        decision = (
            f"**Registered:** `{name}` version {number} ({aliases}), the "
            f"`{version.tags.get('flavor', '?')}` model.\n\n{version.description}"
        )
    else:
        decision = f"**Nothing promoted:** {failure or 'the pipeline did not reach registration'}"
    note = summary_markdown(title, metrics_by_model, decision, cached)
    client.set_tag(parent_run_id, tags.NOTE, note)
    return note
