"""Measure the logged chat models (both flavors, each ONNX variant), and the champion when there is one, on the
same eval items: quality, speed and the paired comparisons the gates read."""

import tempfile
from pathlib import Path

import mlflow

from slmflow import tags
from slmflow.evaluation.comparison import lm_eval_metrics
from slmflow.evaluation.dataset import load_examples
from slmflow.evaluation.lm_eval_runs import score_models
from slmflow.evaluation.lm_eval_tasks import load_task
from slmflow.evaluation.model_uris import split_named_uris
from slmflow.evaluation.reporting import log_reports
from slmflow.evaluation.runner import evaluate_model, expected_plan
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.step import run_step


def evaluate(args, config, settings) -> None:
    examples = load_examples(config.evaluation)
    # One onnx-chat model, or one per source.builder variant (`onnx-chat-<variant>`), all on the same items.
    measured = [
        *split_named_uris(args.onnx_model_uri, tags.ONNX_MODEL_NAME).items(),
        (tags.TRANSFORMERS_MODEL_NAME, args.transformers_model_uri),
    ]
    with_champion = args.champion_model_uri != tags.NO_CHAMPION
    # The base (before fine-tuning) in each flavor, for training.require_improvement_over_base: each
    # candidate is compared with the base in its own flavor, so the gap is the fine-tune's, not int4's.
    base_uris = {
        flavor: uri
        for flavor, uri in (
            (tags.ONNX_MODEL_NAME, args.base_onnx_model_uri),
            (tags.TRANSFORMERS_MODEL_NAME, args.base_transformers_model_uri),
        )
        if uri != tags.NO_BASE
    }
    evaluation = config.evaluation
    print(expected_plan(len(examples), len(measured) + with_champion + len(base_uris), evaluation), flush=True)
    max_tokens, batch_size = evaluation.max_new_tokens, evaluation.batch_size
    reports = [evaluate_model(name, uri, examples, max_tokens, batch_size) for name, uri in measured]
    champion = None
    if with_champion:
        try:
            champion = evaluate_model(
                tags.CHAMPION_MODEL_NAME, args.champion_model_uri, examples, max_tokens, batch_size
            )
            mlflow.set_tag(tags.CHAMPION_MEASURED, args.champion_model_uri)
        except Exception as error:  # the gates fall back to the champion's recorded metrics and say so
            reason = f"{args.champion_model_uri} could not be measured: {type(error).__name__}: {error}"
            mlflow.set_tag(tags.CHAMPION_ERROR, reason[:4000])
            print(f"warning: {reason}", flush=True)
    bases = {
        flavor: evaluate_model(tags.base_model_name(flavor), uri, examples, max_tokens, batch_size)
        for flavor, uri in base_uris.items()
    }
    for name, metrics in log_reports(examples, reports, config.evaluation, champion, bases).items():
        print(f"{name}: " + ", ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items())), flush=True)
    if evaluation.lm_eval_task is not None:
        served = dict(measured) | ({tags.CHAMPION_MODEL_NAME: args.champion_model_uri} if champion else {})
        lm_eval_task(evaluation, served)


def lm_eval_task(evaluation, models: dict[str, str]) -> None:
    """The configured lm-eval task against each model served by `python -m slmflow.serve`; its per-item scores
    go through the same paired statistics, logged as `<model>/lm_eval/...` and `delta/<pair>/lm_eval/...`."""
    task = load_task(evaluation.lm_eval_task)
    print(f"evaluate: lm-eval task {task.name} ({task.metric}) against {len(models)} served models", flush=True)
    with tempfile.TemporaryDirectory() as logs:
        try:
            scores = score_models(task, models, Path(logs))
        finally:
            mlflow.log_artifacts(logs, "eval/lm_eval")
    metrics = lm_eval_metrics(scores, evaluation)
    mlflow.log_metrics(metrics)
    print("lm-eval: " + ", ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items())), flush=True)


if __name__ == "__main__":
    run_step(STEPS["evaluate"], evaluate)
