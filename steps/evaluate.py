"""Measure both logged chat models, and the champion when there is one, on the same eval items: quality,
speed and the paired comparisons the gates read."""

import mlflow

from slmflow import tags
from slmflow.evaluation.dataset import load_examples
from slmflow.evaluation.reporting import log_reports
from slmflow.evaluation.runner import evaluate_model
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.step import run_step


def evaluate(args, config, settings) -> None:
    examples = load_examples(config.evaluation)
    measured = [
        (tags.ONNX_MODEL_NAME, args.onnx_model_uri),
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
    print(
        f"evaluate: {len(examples)} items x {len(measured) + with_champion + len(base_uris)} models, "
        "each in its own process, "
        "one request at a time; each model prints its expected time after its first items",
        flush=True,
    )
    max_tokens = config.evaluation.max_new_tokens
    reports = [evaluate_model(name, uri, examples, max_tokens) for name, uri in measured]
    champion = None
    if with_champion:
        try:
            champion = evaluate_model(tags.CHAMPION_MODEL_NAME, args.champion_model_uri, examples, max_tokens)
            mlflow.set_tag(tags.CHAMPION_MEASURED, args.champion_model_uri)
        except Exception as error:  # the gates fall back to the champion's recorded metrics and say so
            reason = f"{args.champion_model_uri} could not be measured: {type(error).__name__}: {error}"
            mlflow.set_tag(tags.CHAMPION_ERROR, reason[:4000])
            print(f"warning: {reason}", flush=True)
    bases = {
        flavor: evaluate_model(tags.base_model_name(flavor), uri, examples, max_tokens)
        for flavor, uri in base_uris.items()
    }
    for name, metrics in log_reports(examples, reports, config.evaluation, champion, bases).items():
        print(f"{name}: " + ", ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items())), flush=True)


if __name__ == "__main__":
    run_step(STEPS["evaluate"], evaluate)
