"""Each entry point declared once: its parameters, its outputs and the config sections it reads.

`MLproject`, every step's argument parser, the outputs a step may record and the cache keys of
`main` all derive from `STEPS`; `python -m slmflow.pipeline.contract` prints the `MLproject`
these declarations imply, and with `--kubernetes` the one in deploy/kubernetes (a test checks both files).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

DEFAULT_CONFIG = "configs/phi3-mini-4k-instruct.yaml"
# `fetch_model` run alone resolves the source itself; `main` passes the revision it resolved first.
RESOLVE_REVISION = "resolve"


@dataclass(frozen=True)
class Parameter:
    name: str
    help: str
    default: str | None = None  # None: required

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


GENERATION_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed")

CONFIG = Parameter("config", "pipeline config YAML, relative to the project root", DEFAULT_CONFIG)


@dataclass(frozen=True)
class StepContract:
    """One MLproject entry point. Parameters are strings: MLflow makes `path` ones absolute."""

    entry_point: str
    description: str
    parameters: tuple[Parameter, ...]
    outputs: tuple[str, ...] = ()
    # Config sections (or dotted fields) the step reads: a change elsewhere does not redo it.
    sections: tuple[str, ...] = ()
    # Whether `main` runs it; a step outside the pipeline (a scoring job, say) is declared the same way.
    in_pipeline: bool = True
    # (dotted config field, project module): code the step runs only when that field is set. Its key covers the
    # module's closure then, and not otherwise (lm-eval tasks start the OpenAI server: a server fix must not
    # redo every evaluate).
    optional_code: tuple[tuple[str, str], ...] = ()
    # Outputs recorded once per source.builder variant when there are several: `onnx_uri.int4-b32`.
    variant_outputs: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        arguments = " ".join(f"{p.flag} {{{p.name}}}" for p in self.parameters)
        return f"python -m steps.{self.entry_point} {arguments}"

    def mlproject_entry(self) -> dict:
        parameters = {
            p.name: "string" if p.default is None else {"type": "string", "default": p.default} for p in self.parameters
        }
        return {"parameters": parameters, "command": self.command}

    def argument_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=f"steps.{self.entry_point}", description=self.description)
        for p in self.parameters:
            parser.add_argument(p.flag, dest=p.name, required=p.default is None, default=p.default, help=p.help)
        return parser

    def check_outputs(self, names: Mapping[str, object] | tuple[str, ...]) -> None:
        declared = set(self.outputs)
        unknown = sorted(
            name for name in names if name not in declared and name.partition(".")[0] not in self.variant_outputs
        )
        if unknown:
            raise ValueError(f"step '{self.entry_point}' declares no output {', '.join(unknown)}")


STEPS: dict[str, StepContract] = {
    step.entry_point: step
    for step in (
        StepContract(
            "main",
            "Run the whole pipeline, each step a child run, reusing finished steps whose inputs did not change.",
            (CONFIG, Parameter("use_cache", "reuse finished steps with the same cache key", "true")),
            outputs=("onnx_model_uri", "transformers_model_uri", "registered_model", "registered_version"),
            in_pipeline=False,
        ),
        StepContract(
            "fetch_model",
            "Fetch the model (builtin, local folder or hub commit) and its ONNX GenAI form; log both.",
            (CONFIG, Parameter("revision", "the source revision main resolved", RESOLVE_REVISION)),
            outputs=("checkpoint_uri", "onnx_uri", "source_revision"),
            sections=("source",),
            variant_outputs=("onnx_uri",),
        ),
        StepContract(
            "finetune",
            "Fine-tune the fetched checkpoint with LoRA (TRL SFTTrainer), merge it and build its ONNX GenAI form; "
            "log both.",
            (
                CONFIG,
                Parameter("checkpoint_uri", "runs:/ URI or pinned hub:org/name@commit of the base checkpoint"),
                Parameter("source_revision", "the base source revision"),
            ),
            outputs=("checkpoint_uri", "onnx_uri", "source_revision"),
            # The builder options too: the ONNX form of the fine-tuned checkpoint is built here.
            sections=("training", "source.builder", "source.allow_patterns"),
        ),
        StepContract(
            "log_onnx_wrapper",
            "Log the ONNX GenAI folder as the `onnx-chat` pyfunc chat model (`onnx-chat-<variant>` for a variant).",
            (
                CONFIG,
                Parameter("onnx_uri", "runs:/ URI of the ONNX GenAI folder"),
                Parameter("variant", "the source.builder variant's name when there are several, else empty", ""),
            ),
            outputs=("model_uri",),
            sections=("generation", "runtime"),
        ),
        StepContract(
            "log_transformers_pipeline",
            "Log the checkpoint as the `transformers-chat` text-generation pipeline (task llm/v1/chat).",
            (CONFIG, Parameter("checkpoint_uri", "runs:/ URI or pinned hub:org/name@commit of the checkpoint")),
            outputs=("model_uri",),
            sections=("generation", "source.trust_remote_code"),
        ),
        StepContract(
            "evaluate",
            "Measure the logged chat models (each ONNX variant, transformers-chat) and the champion on the same eval "
            "items: quality, speed, paired gaps.",
            (
                CONFIG,
                Parameter(
                    "onnx_model_uri",
                    "models:/ URI of the onnx-chat model; with several variants `onnx-chat-<variant>=<uri>`, "
                    "space-separated",
                ),
                Parameter("transformers_model_uri", "models:/ URI of the transformers-chat model"),
                Parameter(
                    "champion_model_uri",
                    "models:/<name>/<version> of the champion to measure on the same items, or none",
                    "none",
                ),
                Parameter(
                    "base_onnx_model_uri",
                    "models:/ URI of the base (not fine-tuned) onnx-chat model to measure on the same items, or none",
                    "none",
                ),
                Parameter(
                    "base_transformers_model_uri",
                    "models:/ URI of the base (not fine-tuned) transformers-chat model, or none",
                    "none",
                ),
            ),
            sections=("evaluation",),
            optional_code=(("evaluation.lm_eval_task", "slmflow.evaluation.lm_eval_runs"),),
        ),
        StepContract(
            "register",
            "Register the better evaluated model behind the configured gates; move the `champion` alias to it.",
            (
                CONFIG,
                Parameter("evaluate_run_id", "the evaluate run whose candidates to register"),
                Parameter("source_revision", "the revision of the evaluated weights (fetched or fine-tuned)"),
                Parameter("training_run_id", "the finetune run that made the weights; empty when not fine-tuned", ""),
            ),
            outputs=("registered_model", "registered_version"),
            sections=("registry", "source", "evaluation", "training", "training.require_improvement_over_base"),
        ),
        StepContract(
            "batch_score",
            "Score a table of chat requests (JSON Lines or Parquet) with a chat model on Spark into Parquet.",
            (
                Parameter("model_uri", "models:/ or runs:/ URI of a chat model (onnx-chat)"),
                Parameter("input", "JSON Lines (.jsonl) or Parquet (.parquet or a folder) of requests, one a row"),
                Parameter("output", "Parquet folder to create: the rows with answer, finish_reason, usage, error"),
                Parameter("spark_master", "any Spark master URL: local[N], spark://, yarn, k8s://", "local[2]"),
                Parameter("batch_size", "rows per predict call (Arrow batch) in a Spark worker", "8"),
                # Generation defaults: "" leaves a field to the model's own default; a row's own value wins.
                *(Parameter(name, f"default {name} for rows without one", "") for name in GENERATION_FIELDS),
            ),
            outputs=("batch_output",),
            in_pipeline=False,
        ),
    )
}


# What the Kubernetes backend builds the project's image FROM: deploy/Dockerfile's image, as the CronJob's.
KUBERNETES_BASE_IMAGE = "registry.example.com/slmflow:latest"
ROOT_HEADER = """\
# Generated from slmflow/pipeline/contract.py (python -m slmflow.pipeline.contract > MLproject).
# Parameters are strings on purpose: MLflow makes `path` parameters absolute.
"""
KUBERNETES_HEADER = """\
# Generated from slmflow/pipeline/contract.py
# (python -m slmflow.pipeline.contract --kubernetes > deploy/kubernetes/MLproject).
# The project for MLflow's Kubernetes backend (run from the repository root):
#   mlflow run deploy/kubernetes -e batch_score --backend kubernetes \\
#     --backend-config deploy/kubernetes/kubernetes_config.json --build-image -P ...
# MLflow refuses docker_env beside conda_env, hence this folder. slmflow/, steps/ and configs/ here
# are links to the repository's: MLflow copies this folder (links followed) into the image it
# builds FROM the base image below (deploy/Dockerfile: Python, requirements.txt, Java, as the
# CronJob), so each step runs the same code as a local `mlflow run`.
"""


def variant_output(name: str, label: str) -> str:
    """A per-variant output's name: `onnx_uri` for the single variant (label ""), `onnx_uri.int4-b32` otherwise."""
    return f"{name}.{label}" if label else name


def mlproject(kubernetes: bool = False) -> dict:
    """The MLproject these contracts imply; for the Kubernetes backend in a docker_env instead of conda.yaml."""
    environment = {"docker_env": {"image": KUBERNETES_BASE_IMAGE}} if kubernetes else {"conda_env": "conda.yaml"}
    return {
        "name": "slmflow",
        **environment,
        "entry_points": {name: step.mlproject_entry() for name, step in STEPS.items()},
    }


def mlproject_text(kubernetes: bool = False) -> str:
    """The MLproject file as written: a header saying how it was made, then the YAML."""
    header = KUBERNETES_HEADER if kubernetes else ROOT_HEADER
    return header + yaml.safe_dump(mlproject(kubernetes), sort_keys=False, width=200)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the MLproject the step contracts imply.")
    parser.add_argument("--kubernetes", action="store_true", help="the deploy/kubernetes variant (docker_env)")
    print(mlproject_text(parser.parse_args().kubernetes), end="")
