"""Recording an evaluation in MLflow: run metrics (each model's, and the paired comparisons), metrics on
each logged model, the evaluation view, the per-example table, the report and the plots."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slmflow import tags
from slmflow.config import EvaluationConfig
from slmflow.evaluation.answers import reads_correct
from slmflow.evaluation.comparison import comparison_metrics, model_metrics
from slmflow.evaluation.dataset import EvalExample, eval_dataset, examples_digest
from slmflow.evaluation.metrics import ModelReport, agreement_rate, exact_match, rouge_l
from slmflow.evaluation.model_uris import logged_model_id
from slmflow.evaluation.plots import write_plots

PLOTS_DIR = "eval/plots"
# Scores of one answer, each an offline code scorer in MLflow's evaluation view: name -> (answer, example) -> value.
ANSWER_SCORES: dict[str, Callable[[str, EvalExample], Any]] = {
    "correct": lambda answer, example: reads_correct(answer, example.key, example.question),
    "exact_match": lambda answer, example: exact_match(answer, example.reference),
    "rouge_l": lambda answer, example: rouge_l(answer, example.reference),
}
# mlflow.genai.evaluate scores rows from many threads, each writing its trace: on sqlite more than a few
# at once exhaust SQLAlchemy's pool (5 + 10 overflow) and traces are lost. Two rows, one scorer at a time.
EVALUATION_VIEW_WORKERS = {"MLFLOW_GENAI_EVAL_MAX_WORKERS": "2", "MLFLOW_GENAI_EVAL_MAX_SCORER_WORKERS": "1"}


def example_table(examples: Sequence[EvalExample], reports: Sequence[ModelReport]) -> dict[str, list]:
    table: dict[str, list] = {
        "question": [e.question for e in examples],
        "reference": [e.reference for e in examples],
        "skill": [e.skill for e in examples],
    }
    for report in reports:
        table[f"{report.name}/answer"] = [r.answer for r in report.results]
        table[f"{report.name}/correct"] = [r.correct for r in report.results]
        table[f"{report.name}/latency_s"] = [
            None if r.latency_s is None else round(r.latency_s, 4) for r in report.results
        ]
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
            "expectations": {
                "expected_response": example.reference,
                "key_fact": example.answer,
                "aliases": list(example.key.aliases),
                "skill": example.skill,
            },
        }
        for index, example in enumerate(examples)
    ]


def answer_scorers(model_names: Sequence[str], examples: Sequence[EvalExample]) -> list:
    """Code scorers that run offline, one per score and model, named `<model>/<score>`; each finds its
    example (with its whole answer key) by the question."""
    from mlflow.genai.scorers import scorer

    by_question = {example.question: example for example in examples}

    def make(model: str, score_name: str, score: Callable[[str, EvalExample], Any]):
        def score_answer(inputs: dict[str, Any], outputs: dict[str, str]) -> Any:
            return score(outputs[model], by_question[inputs["messages"][-1]["content"]])

        return scorer(score_answer, name=f"{model}/{score_name}")

    return [make(model, name, score) for model in model_names for name, score in ANSWER_SCORES.items()]


def log_evaluation_view(examples: Sequence[EvalExample], reports: Sequence[ModelReport]) -> int:
    """Each example as a trace of the active run with every answer and its scores (the run's Traces tab);
    returns how many traces the run holds, which must be one per example.

    The answers were produced and timed beforehand, in isolation: MLflow's harness only scores them.
    """
    import mlflow
    import pandas as pd

    records = pd.DataFrame(evaluation_records(examples, reports))
    previous = {name: os.environ.get(name) for name in EVALUATION_VIEW_WORKERS}
    os.environ.update(EVALUATION_VIEW_WORKERS)
    try:
        mlflow.genai.evaluate(data=records, scorers=answer_scorers([report.name for report in reports], examples))
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("the evaluation view is logged inside the evaluate run, and no run is active")
    traces = mlflow.search_traces(
        locations=[run.info.experiment_id], run_id=run.info.run_id, return_type="list", include_spans=False
    )
    if len(traces) != len(examples):
        raise RuntimeError(f"the evaluation view kept {len(traces)} traces of {len(examples)} examples")
    return len(traces)


def log_reports(
    examples: Sequence[EvalExample],
    candidates: Sequence[ModelReport],
    evaluation: EvaluationConfig,
    champion: ModelReport | None = None,
    bases: Mapping[str, ModelReport] | None = None,
) -> dict[str, dict[str, float]]:
    """Log the eval items as the run's input; each model's metrics on the run (prefixed by model name) and
    each candidate's on its logged model (plain names, against the eval items); the paired comparisons
    (`delta/...`); the evaluation view, the per-example table, the plots and the full report. `bases` are the
    base model's reports by candidate flavor, named `base-<flavor>`."""
    import mlflow

    dataset = eval_dataset(list(examples), evaluation)
    mlflow.log_input(dataset, context="evaluation")
    reports = [*candidates, *([champion] if champion else []), *(bases or {}).values()]
    metrics_by_model = {report.name: model_metrics(report, examples, evaluation.confidence) for report in reports}
    for report in reports:
        mlflow.log_metrics({f"{report.name}/{key}": value for key, value in metrics_by_model[report.name].items()})
    for report in candidates:
        mlflow.log_metrics(metrics_by_model[report.name], model_id=logged_model_id(report.model_uri), dataset=dataset)
        mlflow.set_tag(tags.CANDIDATE_PREFIX + report.name, report.model_uri)
    comparisons = comparison_metrics({report.name: report for report in candidates}, champion, evaluation, bases)
    mlflow.log_metrics(comparisons)
    if len(candidates) == 2:
        mlflow.log_metric("agreement_rate", agreement_rate(*candidates))
    mlflow.log_params({"eval_examples": len(examples), tags.EVAL_DIGEST: examples_digest(examples)})
    mlflow.log_table(example_table(examples, reports), artifact_file="eval/examples.json")
    mlflow.log_dict(report_summary(reports), "eval/report.json")
    with tempfile.TemporaryDirectory() as folder:
        for path in write_plots(reports, Path(folder)):
            mlflow.log_artifact(str(path), artifact_path=PLOTS_DIR)
    log_evaluation_view(examples, reports)
    return {**metrics_by_model, "delta": _strip(comparisons, tags.DELTA_PREFIX)}


def _strip(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    return {key.removeprefix(prefix): value for key, value in metrics.items()}
