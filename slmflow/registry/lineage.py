"""What identifies a registered version and what describes it: identity tags, lineage tags, the description."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class TrainingFacts:
    """What a fine-tuned version was trained on and how, as its finetune run recorded it."""

    run_id: str
    dataset_digest: str
    rows: int
    steps: int
    final_loss: float
    held_out_loss: float | None
    base_revision: str

    @classmethod
    def from_run(cls, run) -> TrainingFacts:
        metrics, recorded = run.data.metrics, run.data.tags
        held_out = metrics.get("held_out_loss")
        return cls(
            run_id=run.info.run_id,
            dataset_digest=recorded[tags.DATASET_DIGEST],
            rows=int(metrics["dataset_rows"]),
            steps=int(metrics["steps"]),
            final_loss=float(metrics["final_loss"]),
            held_out_loss=None if held_out is None or math.isnan(held_out) else float(held_out),
            base_revision=recorded[tags.BASE_REVISION],
        )

    def describe(self) -> str:
        held_out = f", held-out loss {self.held_out_loss:.4f}" if self.held_out_loss is not None else ""
        return (
            f"Fine-tuned (LoRA, merged) from base revision {self.base_revision} on a training set of {self.rows} rows "
            f"(sha256 {self.dataset_digest}): {self.steps} steps, final training loss {self.final_loss:.4f}"
            f"{held_out} (finetune run {self.run_id})."
        )


def served_code_hash(flavor: str) -> str:
    """The code a registered version of this flavor runs: the module that logs it and all it imports, and the
    pins; not the pipeline's other code (a change to the server or the evaluation registers nothing new)."""
    return module_digest(FLAVOR_MODULES[tags.flavor_of(flavor)])


def registration_identity(
    config: PipelineConfig,
    source_revision: str,
    code_hash: str,
    training: TrainingFacts | None = None,
    candidate: str = "",
) -> dict[str, str]:
    """A fine-tuned version's revision is its weights' digest; the training set's digest is named beside it.
    With several source.builder variants the chosen `candidate` is named too: the variants share the code and
    the config, not the weights, so a run choosing another variant registers it."""
    identity = {
        "source_revision": source_revision,
        "config_hash": config.section_hash(*SERVED_SECTIONS),
        "code_hash": code_hash,
    }
    if training is not None:
        identity[tags.DATASET_IDENTITY] = training.dataset_digest
    if len(config.source.variants) > 1:
        identity[tags.CANDIDATE_IDENTITY] = candidate
    return identity


def registration_tags(
    config: PipelineConfig,
    candidate: Candidate,
    evaluate_run_id: str,
    git_commit: str,
    training: TrainingFacts | None = None,
) -> dict:
    """Lineage that is not identity: the same model registered from another commit is not new."""
    lineage = {
        "source": _source_label(config),
        "evaluate_run_id": evaluate_run_id,
        "model_uri": candidate.model_uri,
        "git_commit": git_commit,
    }
    if training is not None:
        lineage.update({"base_revision": training.base_revision, "finetune_run_id": training.run_id})
    return lineage


def registration_description(
    config: PipelineConfig, evaluation: Evaluation, source_revision: str, training: TrainingFacts | None = None
) -> str:
    """Where the version comes from (and what it was trained on) and why it was chosen, with the numbers."""
    chosen = choose_candidate(evaluation.candidates, config.registry.selection, evaluation.accuracy_gap)
    trained = f"{training.describe()}\n\n" if training is not None else ""
    return (
        f"{chosen.flavor} chat model from {_source_label(config)} at revision {source_revision}, "
        f"evaluated on {eval_set_name(config.evaluation)} (evaluate run {evaluation.run_id}).\n\n"
        + trained
        + explain_choice(evaluation.candidates, config.registry.selection, evaluation.accuracy_gap)
    )


def _source_label(config: PipelineConfig) -> str:
    """The source without a machine's path: a local folder is known by its revision (a digest)."""
    return "local folder" if config.source.kind == "local" else config.source.model
