"""Fetch the model (builtin, local folder or GGUF, hub commit) and its ONNX GenAI form; log both for later steps."""

import mlflow

from slmflow.fetch.handoff import remember_folder
from slmflow.fetch.hub import hub_reference
from slmflow.fetch.sources import fetch_model
from slmflow.pipeline.contract import RESOLVE_REVISION, STEPS
from slmflow.pipeline.step import run_step, set_outputs

STEP = STEPS["fetch_model"]


def fetch(args, config, settings) -> None:
    fetched = fetch_model(config.source, settings, None if args.revision == RESOLVE_REVISION else args.revision)
    mlflow.log_params(
        {"source": fetched.source, "resolved_revision": fetched.revision, "onnx_origin": fetched.onnx_origin}
    )
    if fetched.gguf is not None:
        mlflow.log_params({"gguf_sha256": fetched.gguf["sha256"], "gguf_quantization": fetched.gguf["quantization"]})
    mlflow.log_dict(fetched.manifest(), "manifest.json")
    run_id = mlflow.active_run().info.run_id
    # Later steps may run on another machine: they get URIs of what was fetched, never local folders.
    variant = config.source.onnx
    if variant is None:
        onnx_uri = f"runs:/{run_id}/onnx"
        mlflow.log_artifacts(str(fetched.onnx_dir), "onnx")
        remember_folder(onnx_uri, fetched.onnx_dir, settings)
    else:
        onnx_uri = hub_reference(variant.repo, variant.revision, variant.subfolder)
    if config.source.kind == "hub" and config.source.chat_template is None:  # else the hub's files are not all of it
        checkpoint_uri = hub_reference(config.source.name, fetched.revision)
    else:
        checkpoint_uri = f"runs:/{run_id}/checkpoint"
        mlflow.log_artifacts(str(fetched.checkpoint_dir), "checkpoint")
        remember_folder(checkpoint_uri, fetched.checkpoint_dir, settings)
    set_outputs(
        STEP,
        contents={"onnx_uri": fetched.content("onnx"), "checkpoint_uri": fetched.content("checkpoint")},
        checkpoint_uri=checkpoint_uri,
        onnx_uri=onnx_uri,
        source_revision=fetched.revision,
    )


if __name__ == "__main__":
    run_step(STEP, fetch)
