"""Every tag, tag prefix and model name the project writes or reads, declared once (as MLflow's `mlflow_tags.py`).

Writers and readers (the steps, the runner, the summary, the registrar, the server, the tests) import
these names instead of spelling the strings, so a rename is one edit and a typo is an import error.
"""

from __future__ import annotations

# MLflow's own tags that the project sets or reads.
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # a run's description in the UI
PARENT_RUN_ID = "mlflow.parentRunId"
PROJECT_ENTRY_POINT = "mlflow.project.entryPoint"
PROJECT_ENV = "mlflow.project.env"
GIT_COMMIT = "mlflow.source.git.commit"
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_DEVELOPMENT = "custom_model_development"

# The two logged chat models: their names in the evaluation, the registry and the server.
ONNX_MODEL_NAME = "onnx-chat"
TRANSFORMERS_MODEL_NAME = "transformers-chat"


def onnx_model_name(variant: str) -> str:
    """A source.builder variant's model: `onnx-chat-int4-b32`; the single variant (label "") keeps `onnx-chat`."""
    return f"{ONNX_MODEL_NAME}-{variant}" if variant else ONNX_MODEL_NAME


def flavor_of(model_name: str) -> str:
    """The flavor a candidate's model name belongs to: every ONNX variant is `onnx-chat`."""
    return ONNX_MODEL_NAME if model_name.startswith(ONNX_MODEL_NAME + "-") else model_name


# Step runs.
ERROR = "slmflow.error"  # why a step failed, in one line
CONFIG_HASH = "slmflow.config_hash"
CACHE_KEY = "slmflow.cache_key"
OUTPUT_PREFIX = "slmflow.output."  # a step's declared outputs, read by `main`
CONTENT_PREFIX = "slmflow.content."  # what an output holds, for cache keys downstream
CANDIDATE_PREFIX = "slmflow.candidate."  # on the evaluate run: each evaluated model's URI, by model name
CHAMPION_MEASURED = "slmflow.champion.measured"  # on the evaluate run: the champion version measured with them
CHAMPION_ERROR = "slmflow.champion.error"  # on the evaluate run: why the champion could not be measured
EVAL_DIGEST = "eval_digest"  # param of the evaluate run: the version of the eval items

# The evaluation's model names and paired comparisons: `<model>/accuracy`, `delta/<pair>/accuracy_ci_low`.
CHAMPION_MODEL_NAME = "champion"
DELTA_PREFIX = "delta/"
ONNX_VS_TRANSFORMERS = "onnx_vs_transformers"
NO_CHAMPION = "none"  # the evaluate step's champion parameter when there is nothing to measure


def versus(candidate: str, baseline: str) -> str:
    """The paired comparison of two candidates: `onnx_vs_transformers` for the two flavors as always,
    `onnx-chat-int4-b16_vs_onnx-chat-int4-b32` between variants."""
    if (candidate, baseline) == (ONNX_MODEL_NAME, TRANSFORMERS_MODEL_NAME):
        return ONNX_VS_TRANSFORMERS
    return f"{candidate}_vs_{baseline}"


def versus_champion(model: str) -> str:
    """The paired comparison of an evaluated model with the champion: `onnx-chat_vs_champion`."""
    return f"{model}_vs_{CHAMPION_MODEL_NAME}"


# The base model (fetch_model's checkpoint before finetune), measured in the same flavor as each candidate when
# `training.require_improvement_over_base` is on: `base-onnx-chat/accuracy`, `delta/onnx-chat_vs_base/accuracy`.
BASE_MODEL_PREFIX = "base-"
NO_BASE = "none"  # the evaluate step's base parameters when the base is not measured


def base_model_name(model: str) -> str:
    return f"{BASE_MODEL_PREFIX}{model}"


def versus_base(model: str) -> str:
    """The paired comparison of a fine-tuned candidate with the base in its own flavor: `onnx-chat_vs_base`."""
    return f"{model}_vs_base"


# The finetune step run (also lineage tags on a registered fine-tuned version).
DATASET_DIGEST = "slmflow.dataset_digest"  # sha256 of the training set's file (or of a suite split's rows as one)
BASE_REVISION = "slmflow.base_revision"  # the revision of the checkpoint that was fine-tuned
FINETUNE_REUSED = "slmflow.finetune.reused"  # "true": this machine's trained folder for the same key was reused

# The parent (`main`) run and its experiment.
SOURCE_REVISION = "slmflow.source_revision"
EXPERIMENT_CONFIG = "slmflow.config"
_STEP_PREFIX = "slmflow.step."


def step_run_id(entry_point: str) -> str:
    """The parent's tag holding the run id of one of its steps."""
    return f"{_STEP_PREFIX}{entry_point}.run_id"


def step_cached(entry_point: str) -> str:
    """The parent's tag saying ("true"/"false") whether a step's run was reused."""
    return f"{_STEP_PREFIX}{entry_point}.cached"


def steps_recorded(tags: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """The steps a parent run recorded: {entry point: (run id, reused)}."""
    found = {}
    for key, value in tags.items():
        if key.startswith(_STEP_PREFIX) and key.endswith(".run_id"):
            entry_point = key.removeprefix(_STEP_PREFIX).removesuffix(".run_id")
            found[entry_point] = (value, tags.get(step_cached(entry_point)) == "true")
    return found


# Model versions in the registry.
DECISION = "decision"  # what registration did with the version: promoted to champion, or parked
METRIC_PREFIX = "metric."
GATE_PREFIX = "gate."  # one tag per gate: its statistic, interval and verdict
ALIASES_SET = "aliases_set"  # a version's last write: without it, a killed job left its promotion unfinished
FLAVOR = "flavor"
IDENTITY = ("source_revision", "config_hash", "code_hash")  # the same three never get a second version
DATASET_IDENTITY = "dataset_digest"  # and, for a fine-tuned version, the training set it was trained on
CANDIDATE_IDENTITY = "candidate"  # and, among several source.builder variants, the one registered
