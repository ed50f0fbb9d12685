"""Run the whole pipeline, each step a child run, reusing finished steps whose inputs did not change."""

import mlflow

from slmflow.errors import ConfigError
from slmflow.pipeline.contract import STEPS
from slmflow.pipeline.runner import run_pipeline
from slmflow.pipeline.step import run_step


def main(args, config, settings) -> None:
    if args.use_cache not in ("true", "false"):
        raise ConfigError(f"use_cache: '{args.use_cache}' is neither 'true' nor 'false'")
    summary = run_pipeline(config, args.config, use_cache=args.use_cache == "true", settings=settings)
    run = mlflow.active_run()
    print(
        f"\npipeline finished: run {run.info.run_id} in experiment {run.info.experiment_id}\n"
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
