"""Measure both logged chat models on the same eval set: quality and speed."""

from slmflow import tags
from slmflow.evaluation.dataset import load_eval_set
from slmflow.evaluation.reporting import log_reports
from slmflow.evaluation.runner import evaluate_model
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.step import run_step


def evaluate(args, config, settings) -> None:
    examples = load_eval_set(config.evaluation.eval_set, config.evaluation.max_examples)
    reports = [
        evaluate_model(tags.ONNX_MODEL_NAME, args.onnx_model_uri, examples),
        evaluate_model(tags.TRANSFORMERS_MODEL_NAME, args.transformers_model_uri, examples),
    ]
    for name, metrics in log_reports(examples, reports, config.evaluation.eval_set).items():
        print(f"{name}: " + ", ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items())))


if __name__ == "__main__":
    run_step(STEPS["evaluate"], evaluate)
