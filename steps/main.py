"""Run the whole pipeline, each step a child run, reusing finished steps whose inputs did not change."""

import sys

import mlflow

from slmflow import tags
from slmflow.errors import ConfigError, StepFailedError
from slmflow.evaluation.dataset import load_examples
from slmflow.evaluation.lm_eval_tasks import load_task
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.runner import run_pipeline
from slmflow.pipeline.step import run_step
from slmflow.pipeline.summary import describe_experiment, pipeline_run_name, record_summary
from slmflow.registry.rules import check_margins_resolvable


def main(args, config, settings) -> None:
    if args.use_cache not in ("true", "false"):
        raise ConfigError(f"use_cache: '{args.use_cache}' is neither 'true' nor 'false'")
    # Before any model is built: a margin the eval items cannot resolve would make every decision noise.
    check_margins_resolvable(config, len(load_examples(config.evaluation)))
    if config.evaluation.lm_eval_task is not None:
        load_task(config.evaluation.lm_eval_task)  # a task lm-eval cannot run is refused before any model is built
    run = mlflow.active_run()
    client = mlflow.MlflowClient()
    title = pipeline_run_name(args.config)
    mlflow.set_tag(tags.RUN_NAME, title)
    describe_experiment(client, run.info.experiment_id, args.config)
    try:
        summary = run_pipeline(config, args.config, use_cache=args.use_cache == "true", settings=settings)
    except StepFailedError as error:
        try:
            record_summary(client, run.info.run_id, title, failure=str(error))
        except Exception as note_error:  # the step's own failure is what the user must see
            print(f"warning: no summary note on the pipeline run: {note_error}", file=sys.stderr)
        raise
    record_summary(
        client, run.info.run_id, title, registered=(summary["registered_model"], summary["registered_version"])
    )
    experiment = client.get_experiment(run.info.experiment_id)
    print(
        f"\npipeline finished: run '{title}' ({run.info.run_id}) in experiment '{experiment.name}'\n"
        f"  registered: models:/{summary['registered_model']}/{summary['registered_version']} "
        f"(alias models:/{summary['registered_model']}@champion)\n"
        f"  onnx-chat: {summary['onnx_model_uri']}\n"
        f"  transformers-chat: {summary['transformers_model_uri']}\n"
        f"  tracking store: {mlflow.get_tracking_uri()}  (browse with: mlflow ui --backend-store-uri "
        f"{mlflow.get_tracking_uri()})",
        flush=True,
    )


if __name__ == "__main__":
    run_step(STEPS["main"], main)
