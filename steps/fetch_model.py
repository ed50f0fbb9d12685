"""Fetch the model (builtin, local folder or GGUF, hub commit) and its ONNX GenAI form; log both for later steps."""

import mlflow

from slmflow.fetch.handoff import remember_folder
from slmflow.fetch.hub import hub_reference
from slmflow.fetch.sources import fetch_model, onnx_part
from slmflow.pipeline.contract import RESOLVE_REVISION, STEPS, variant_output
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
    onnx_contents = {
        variant_output("onnx_uri", label): fetched.content(onnx_part(label)) for label in fetched.onnx_dirs
    }
    prebuilt = config.source.onnx
    if prebuilt is not None:
        onnx_uris = {"onnx_uri": hub_reference(prebuilt.repo, prebuilt.revision, prebuilt.subfolder)}
    else:
        onnx_uris = {}
        for label, onnx_dir in fetched.onnx_dirs.items():  # one variant, or each source.builder variant
            onnx_uri = onnx_uris[variant_output("onnx_uri", label)] = f"runs:/{run_id}/{onnx_part(label)}"
            mlflow.log_artifacts(str(onnx_dir), onnx_part(label))
            remember_folder(onnx_uri, onnx_dir, settings)
    if config.source.kind == "hub" and config.source.chat_template is None:  # else the hub's files are not all of it
        checkpoint_uri = hub_reference(config.source.name, fetched.revision)
    else:
        checkpoint_uri = f"runs:/{run_id}/checkpoint"
        mlflow.log_artifacts(str(fetched.checkpoint_dir), "checkpoint")
        remember_folder(checkpoint_uri, fetched.checkpoint_dir, settings)
    set_outputs(
        STEP,
        contents={**onnx_contents, "checkpoint_uri": fetched.content("checkpoint")},
        checkpoint_uri=checkpoint_uri,
        **onnx_uris,
        source_revision=fetched.revision,
    )


if __name__ == "__main__":
    run_step(STEP, fetch)
