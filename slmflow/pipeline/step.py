"""What every step entry point shares: argument parsing, the active run, offline mode, clean failures."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from slmflow import tags
from slmflow.config import PipelineConfig, Settings, load_config
from slmflow.errors import PipelineError
from slmflow.pipeline.contract import StepContract

# `main` hands each child step its cache key through the environment; the step records it as it starts.
CACHE_KEY_ENV = "SLMFLOW_STEP_CACHE_KEY"

StepBody = Callable[[argparse.Namespace, PipelineConfig, Settings], None]


def run_step(step: StepContract, body: StepBody, argv: Sequence[str] | None = None) -> None:
    """Parse the step's declared arguments, load the config, run `body` in the project's run, fail clearly."""
    args = step.argument_parser().parse_args(argv)
    import mlflow

    with mlflow.start_run() as run:
        if os.environ.get(CACHE_KEY_ENV):
            mlflow.set_tag(tags.CACHE_KEY, os.environ[CACHE_KEY_ENV])
        entry_point = run.data.tags.get(tags.PROJECT_ENTRY_POINT)
        if entry_point:  # a step run is named after its entry point instead of a random name
            mlflow.set_tag(tags.RUN_NAME, entry_point)
        try:
            config = load_config(args.config)
            if needs_no_network(config):
                enable_offline_mode()
            mlflow.set_tag(tags.CONFIG_HASH, config.config_hash())
            body(args, config, Settings.from_environment())
        except Exception as error:  # every failure ends the run FAILED with its cause recorded
            _fail(mlflow, run.info.run_id, error)


def set_outputs(step: StepContract, contents: Mapping[str, str] | None = None, **outputs: str) -> None:
    """Record a step's declared outputs (and what they contain) on its run, where `main` reads them."""
    import mlflow

    step.check_outputs(outputs)
    step.check_outputs(tuple(contents or ()))
    values = {tags.OUTPUT_PREFIX + name: str(value) for name, value in outputs.items()}
    values.update({tags.CONTENT_PREFIX + name: digest for name, digest in (contents or {}).items()})
    mlflow.set_tags(values)


def needs_no_network(config: PipelineConfig) -> bool:
    return config.source.kind in ("builtin", "local") and config.source.onnx is None


def enable_offline_mode() -> None:
    """Make every hub client answer from local files at once instead of waiting on the network."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _fail(mlflow, run_id: str, error: Exception) -> NoReturn:
    message = f"{type(error).__name__}: {error}"
    if not isinstance(error, PipelineError):
        traceback.print_exc()
    mlflow.MlflowClient().set_tag(run_id, tags.ERROR, message[:4000])
    mlflow.end_run(status="FAILED")
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)
