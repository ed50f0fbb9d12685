"""Recording an evaluation in MLflow: run metrics, metrics on each logged model, the evaluation view,
the per-example table, the report and the plots."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slmflow import tags
from slmflow.evaluation.dataset import EvalExample, eval_dataset
from slmflow.evaluation.metrics import ModelReport, agreement_rate, contains_answer, exact_match, rouge_l
from slmflow.evaluation.plots import write_plots

PLOTS_DIR = "eval/plots"
# Scores of one answer, each an offline code scorer in MLflow's evaluation view: name -> (answer, example) -> value.
ANSWER_SCORES: dict[str, Callable[[str, dict[str, str]], Any]] = {
    "correct": lambda answer, expected: contains_answer(answer, expected["key_fact"]),
    "exact_match": lambda answer, expected: exact_match(answer, expected["expected_response"]),
    "rouge_l": lambda answer, expected: rouge_l(answer, expected["expected_response"]),
}


def model_id(model_uri: str) -> str:
    """The logged model's id in a `models:/<model_id>` URI."""
    if not model_uri.startswith("models:/m-"):
        raise ValueError(f"not a logged model URI (models:/<model_id>): {model_uri}")
    return model_uri.removeprefix("models:/")


def example_table(examples: Sequence[EvalExample], reports: Sequence[ModelReport]) -> dict[str, list]:
    table: dict[str, list] = {
        "question": [e.question for e in examples],
        "reference": [e.reference for e in examples],
    }
    for report in reports:
        table[f"{report.name}/answer"] = [r.answer for r in report.results]
        table[f"{report.name}/correct"] = [r.correct for r in report.results]
        table[f"{report.name}/latency_s"] = [round(r.latency_s, 4) for r in report.results]
    return table


def report_summary(reports: Sequence[ModelReport]) -> dict[str, Any]:
    return {
        report.name: {
            "model_uri": report.model_uri,
            "metrics": report.metrics(),
            "ttft_s": report.ttft_s,
            "results": [asdict(r) for r in report.results],
        }
        for report in reports
    }


def evaluation_records(examples: Sequence[EvalExample], reports: Sequence[ModelReport]) -> list[dict[str, Any]]:
    """One record per example: the question, every model's answer, what was expected."""
    return [
        {
            "inputs": {"messages": list(example.messages)},
            "outputs": {report.name: report.results[index].answer for report in reports},
            "expectations": {"expected_response": example.reference, "key_fact": example.answer},
        }
        for index, example in enumerate(examples)
    ]


def answer_scorers(model_names: Sequence[str]) -> list:
    """Code scorers that run offline, one per score and model, named `<model>/<score>`."""
    from mlflow.genai.scorers import scorer

    def make(model: str, score_name: str, score: Callable[[str, dict[str, str]], Any]):
        def score_answer(outputs: dict[str, str], expectations: dict[str, str]) -> Any:
            return score(outputs[model], expectations)

        return scorer(score_answer, name=f"{model}/{score_name}")

    return [make(model, name, score) for model in model_names for name, score in ANSWER_SCORES.items()]


def log_evaluation_view(examples: Sequence[EvalExample], reports: Sequence[ModelReport]) -> None:
    """Each example as a trace of the active run with both answers and their scores (the run's Traces tab).

    The answers were produced and timed beforehand, in isolation: MLflow's harness only scores them.
    """
    import mlflow
    import pandas as pd

    records = pd.DataFrame(evaluation_records(examples, reports))
    mlflow.genai.evaluate(data=records, scorers=answer_scorers([report.name for report in reports]))


def log_reports(
    examples: Sequence[EvalExample], reports: Sequence[ModelReport], eval_set: Path
) -> dict[str, dict[str, float]]:
    """Log the eval set as the run's input; each model's metrics on the run (prefixed by model name) and
    on the logged model itself (plain names, against the eval set); the evaluation view, the
    per-example table, the plots and the full report."""
    import mlflow

    dataset = eval_dataset(list(examples), eval_set)
    mlflow.log_input(dataset, context="evaluation")
    metrics_by_model = {report.name: report.metrics() for report in reports}
    for report in reports:
        metrics = metrics_by_model[report.name]
        mlflow.log_metrics({f"{report.name}/{key}": value for key, value in metrics.items()})
        mlflow.log_metrics(metrics, model_id=model_id(report.model_uri), dataset=dataset)
        mlflow.set_tag(tags.CANDIDATE_PREFIX + report.name, report.model_uri)
    if len(reports) == 2:
        mlflow.log_metric("agreement_rate", agreement_rate(*reports))
    mlflow.log_param("eval_examples", len(examples))
    mlflow.log_table(example_table(examples, reports), artifact_file="eval/examples.json")
    mlflow.log_dict(report_summary(reports), "eval/report.json")
    with tempfile.TemporaryDirectory() as folder:
        for path in write_plots(reports, Path(folder)):
            mlflow.log_artifact(str(path), artifact_path=PLOTS_DIR)
    log_evaluation_view(examples, reports)
    return metrics_by_model
