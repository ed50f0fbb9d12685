"""What identifies a registered version and what describes it: identity tags, lineage tags, the description."""

from __future__ import annotations

from slmflow import tags
from slmflow.code import module_digest
from slmflow.config import PipelineConfig
from slmflow.evaluation.dataset import eval_set_name
from slmflow.registry.registrar import Evaluation
from slmflow.registry.rules import Candidate, choose_candidate, explain_choice

# The module that logs each flavor: its import closure is the code a registered version of that flavor runs.
FLAVOR_MODULES = {
    tags.ONNX_MODEL_NAME: "slmflow.flavors.onnx_chat",
    tags.TRANSFORMERS_MODEL_NAME: "slmflow.flavors.transformers_chat",
}
# Together these identify what was registered, the same from any checkout or machine: the weights (the source
# revision), the config the served model is built and run with, and the code the served model runs.
SERVED_SECTIONS = ("source", "generation", "runtime")


def served_code_hash(flavor: str) -> str:
    """The code a registered version of this flavor runs: the module that logs it and all it imports, and the
    pins; not the pipeline's other code (a change to the server or the evaluation registers nothing new)."""
    return module_digest(FLAVOR_MODULES[flavor])


def registration_identity(config: PipelineConfig, source_revision: str, code_hash: str) -> dict[str, str]:
    return {
        "source_revision": source_revision,
        "config_hash": config.section_hash(*SERVED_SECTIONS),
        "code_hash": code_hash,
    }


def registration_tags(config: PipelineConfig, candidate: Candidate, evaluate_run_id: str, git_commit: str) -> dict:
    """Lineage that is not identity: the same model registered from another commit is not new."""
    return {
        "source": _source_label(config),
        "evaluate_run_id": evaluate_run_id,
        "model_uri": candidate.model_uri,
        "git_commit": git_commit,
    }


def registration_description(config: PipelineConfig, evaluation: Evaluation, source_revision: str) -> str:
    """Where the version comes from and why it was chosen over the other flavor, with the numbers."""
    gap = evaluation.onnx_vs_transformers()
    chosen = choose_candidate(evaluation.candidates, config.registry.selection, gap)
    return (
        f"{chosen.flavor} chat model from {_source_label(config)} at revision {source_revision}, "
        f"evaluated on {eval_set_name(config.evaluation)} (evaluate run {evaluation.run_id}).\n\n"
        + explain_choice(evaluation.candidates, config.registry.selection, gap)
    )


def _source_label(config: PipelineConfig) -> str:
    """The source without a machine's path: a local folder is known by its revision (a digest)."""
    return "local folder" if config.source.kind == "local" else config.source.model
