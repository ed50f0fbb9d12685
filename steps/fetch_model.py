"""Fetch the model (builtin, local folder or pinned hub revision) and its ONNX GenAI form."""

import mlflow

from slmflow.pipeline.runner import set_outputs
from slmflow.pipeline.step import run_step
from slmflow.sources import fetch_model


def fetch(args, config, settings) -> None:
    fetched = fetch_model(config.source, settings)
    mlflow.log_params(
        {"source": fetched.source, "resolved_revision": fetched.revision, "onnx_origin": fetched.onnx_origin}
    )
    mlflow.log_dict(fetched.manifest(), "manifest.json")
    set_outputs(checkpoint_dir=fetched.checkpoint_dir, onnx_dir=fetched.onnx_dir, source_revision=fetched.revision)


if __name__ == "__main__":
    run_step(__doc__, fetch)
