"""The one typed configuration: a YAML file validated into `PipelineConfig`, plus the process settings.

Nothing else in the package reads YAML or `os.environ`: steps load a `PipelineConfig` and pass
its parts down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal, TypedDict

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from slmflow.digests import lm_eval_task_digest, sha256_file
from slmflow.errors import ConfigError
from slmflow.policy import (
    DEFAULT_SETTINGS,
    MaxTokens,
    RequestLimits,
    SamplingSettings,
    Seed,
    ServingPolicy,
    Temperature,
    TopK,
    TopP,
)

BUILTIN_PREFIX = "builtin:"
LOCAL_PREFIX = "local:"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxVariant(_Section):
    """A prebuilt ONNX GenAI model on the hub, used instead of running the builder."""

    repo: str
    revision: str = Field(pattern=r"^[0-9a-f]{40}$", description="the 40-hex commit sha")
    subfolder: str = ""


VARIANT_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"  # a tag, an artifact folder and a model name


class BuilderOptions(_Section):
    """Options for `onnxruntime_genai.models.builder` when no prebuilt variant is given: one variant."""

    precision: Literal["int4", "fp32", "fp16"] = "int4"
    execution_provider: Literal["cpu"] = "cpu"
    # 32: on SmolLM2-135M, int4 at block 128 answered 16 of 50 capitals right, at block 32 as many as fp32 (35).
    block_size: int = Field(32, ge=16)
    accuracy_level: int = Field(4, ge=0, le=4)
    # Names the variant's model (`onnx-chat-<name>`) when several are built; null: derived from the options.
    name: str | None = Field(None, pattern=VARIANT_NAME_PATTERN, max_length=40)

    @property
    def variant_name(self) -> str:
        """`int4-b32` (with `-a<level>` when the accuracy level is not 4), `fp32`, `fp16`, or the explicit name."""
        if self.name is not None:
            return self.name
        if self.precision != "int4":
            return self.precision
        level = "" if self.accuracy_level == 4 else f"-a{self.accuracy_level}"
        return f"int4-b{self.block_size}{level}"


def _builders_kind(value: object) -> str:
    return SEVERAL_VARIANTS if isinstance(value, list | tuple) else ONE_VARIANT


# Tagged so that an error names `source.builder.0.block_size`, not both union members (see `_describe`).
ONE_VARIANT, SEVERAL_VARIANTS = "one variant", "several variants"
Builders = Annotated[
    Annotated[BuilderOptions, Tag(ONE_VARIANT)] | Annotated[tuple[BuilderOptions, ...], Tag(SEVERAL_VARIANTS)],
    Discriminator(_builders_kind),
]


class SourceConfig(_Section):
    """Where the model comes from: `builtin:NAME`, `local:PATH` (a folder or a .gguf file), or a hub repo id
    at a pinned revision."""

    model: str
    revision: str | None = None
    # Opt-in for scheduled jobs: follow a hub branch, resolved to its commit before any cache lookup.
    branch: str | None = Field(None, min_length=1)
    allow_patterns: tuple[str, ...] = (
        "*.json",
        "*.safetensors",
        "*.jinja",
        "tokenizer.model",
        "*.txt",
        "*.py",
    )
    onnx: OnnxVariant | None = None
    # One mapping: one variant, named as it always was (`onnx-chat`). A list: each variant is built, logged as
    # `onnx-chat-<name>`, evaluated on the same items, and register picks among them (registry.selection).
    builder: Builders = BuilderOptions()
    trust_remote_code: bool = False
    # A Jinja file (relative to the config) used as the chat template instead of the model's own, or where
    # it has none (a base model's GGUF).
    chat_template: Path | None = None
    # The dtype a GGUF is dequantized to.
    gguf_dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    @property
    def kind(self) -> Literal["builtin", "local", "hub"]:
        if self.model.startswith(BUILTIN_PREFIX):
            return "builtin"
        if self.model.startswith(LOCAL_PREFIX):
            return "local"
        return "hub"

    @property
    def name(self) -> str:
        """The builtin name, the local path, or the hub repo id."""
        for prefix in (BUILTIN_PREFIX, LOCAL_PREFIX):
            if self.model.startswith(prefix):
                return self.model[len(prefix) :]
        return self.model

    @property
    def variants(self) -> tuple[BuilderOptions, ...]:
        return self.builder if isinstance(self.builder, tuple) else (self.builder,)

    @property
    def variant_labels(self) -> dict[str, BuilderOptions]:
        """Each variant by the label its outputs and models carry: "" for a single one (today's names)."""
        if len(self.variants) == 1:
            return {"": self.variants[0]}
        return {options.variant_name: options for options in self.variants}

    @model_validator(mode="after")
    def _variants_are_named_apart(self) -> SourceConfig:
        names = [options.variant_name for options in self.variants]
        if not names:
            raise ValueError("source.builder: the list of variants is empty (give one mapping or a list of them)")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"source.builder: variant names must differ, {', '.join(repeated)} is repeated (set `name` on one)"
            )
        if len(names) > 1 and self.onnx is not None:
            raise ValueError("source.builder: several variants are built by the builder, not taken from source.onnx")
        return self

    @model_validator(mode="after")
    def _hub_needs_a_pinned_revision(self) -> SourceConfig:
        if self.kind != "hub":
            if self.branch:
                raise ValueError(f"source.branch: only hub repos follow a branch, not '{self.model}'")
            return self
        if "/" not in self.model:
            raise ValueError(
                f"source.model: '{self.model}' is neither 'builtin:NAME', 'local:PATH' nor a hub repo id 'org/name'"
            )
        if self.branch and self.revision:
            raise ValueError("source.branch: give either a pinned revision or a branch to follow, not both")
        if self.branch:
            return self
        if not self.revision:
            raise ValueError(
                f"source.revision: hub model '{self.model}' must be pinned to a revision (or set source.branch)"
            )
        if not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(
                f"source.revision: '{self.revision}' is not pinned: give the 40-hex commit sha, not a branch or tag"
            )
        return self


class GenerationConfig(_Section):
    """Generation defaults (a request may override them) and the limits of one request.

    Bounds and defaults are the request model's (`slmflow.chat.request`), declared once."""

    max_new_tokens: MaxTokens = DEFAULT_SETTINGS.max_tokens
    temperature: Temperature = DEFAULT_SETTINGS.temperature
    top_p: TopP = DEFAULT_SETTINGS.top_p
    top_k: TopK = DEFAULT_SETTINGS.top_k
    seed: Seed | None = DEFAULT_SETTINGS.seed
    limits: RequestLimits = RequestLimits()

    def serving_policy(self) -> ServingPolicy:
        """The policy the logged models carry, whatever their flavor."""
        defaults = SamplingSettings(
            max_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
        )
        return ServingPolicy(defaults=defaults, limits=self.limits)


class RuntimeConfig(_Section):
    """How the ONNX model runs on this host."""

    intra_op_num_threads: int = Field(0, ge=0, description="0 lets onnxruntime choose")
    truncate_long_prompts: bool = False


SUITE_SKILLS = ("capitals", "arithmetic", "unit_conversions", "facts")


class SuiteConfig(_Section):
    """An eval suite built by project code: items per skill (null: all of them), sampled by a seed."""

    skills: dict[Literal[SUITE_SKILLS], int | None] = Field(min_length=1)  # type: ignore[valid-type]
    seed: int = 0


class SplitConfig(_Section):
    """Evaluate on one of `parts` disjoint parts of the items (another job may train on the others)."""

    parts: int = Field(ge=2)
    part: int = Field(ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _part_exists(self) -> SplitConfig:
        if self.part >= self.parts:
            raise ValueError(f"split.part: {self.part} is not one of the {self.parts} parts (0..{self.parts - 1})")
        return self


class EvaluationConfig(_Section):
    """What the models are measured on, and how sure the paired comparisons must be."""

    eval_set: Path | None = None
    suite: SuiteConfig | None = None
    split: SplitConfig | None = None
    max_examples: int | None = Field(None, gt=0)
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="level of every interval")
    bootstrap_resamples: int = Field(2000, ge=200)
    seed: int = Field(0, description="seeds the bootstrap: the same items give the same intervals")
    # The fraction of items on which two comparable models disagree, assumed when sizing the suite for a
    # margin before anything is measured (measured here: SmolLM2-135M int4 against fp32 disagree on ~0.1-0.2).
    assumed_discordance: float = Field(0.15, gt=0.0, le=1.0)
    # Each eval request's max_tokens (null: the model's own max_new_tokens): short-answer suites need few
    # tokens, and a model that rambles to its limit costs the most on the slow flavor.
    max_new_tokens: int | None = Field(None, ge=1)
    # Items answered together in the accuracy pass (one left-padded generate() for transformers-chat, one
    # multi-row predict for onnx-chat); latency is still timed one request at a time, on a sample. 1: no batching.
    batch_size: int = Field(16, ge=1, le=32)
    # An lm-evaluation-harness task YAML (generate_until, local data; relative to the config) run through
    # lm-eval's local-chat-completions client against each model served by `python -m slmflow.serve`.
    lm_eval_task: Path | None = None

    @model_validator(mode="after")
    def _one_source_of_items(self) -> EvaluationConfig:
        if (self.eval_set is None) == (self.suite is None):
            raise ValueError("evaluation: give either eval_set (a JSONL file) or suite, not both or neither")
        return self


class SelectionRule(_Section):
    """How register picks the candidate among the evaluated flavors."""

    rule: Literal["best_accuracy", "prefer_onnx"] = "best_accuracy"
    # prefer_onnx: ONNX when the interval on onnx - transformers accuracy lies above -onnx_accuracy_margin.
    onnx_accuracy_margin: float = Field(0.05, gt=0.0, le=1.0)


class Gates(_Section):
    """What a candidate must reach to be registered and promoted."""

    min_accuracy: float = Field(0.0, ge=0.0, le=1.0)
    min_tokens_per_second: float = Field(0.0, ge=0.0)
    # Non-inferiority against the champion: the interval on candidate - champion accuracy must lie above
    # -max_accuracy_regression. null: no accuracy gate against the champion.
    max_accuracy_regression: float | None = Field(0.05, gt=0.0, le=1.0)
    max_latency_regression: float | None = Field(
        None, ge=0.0, description="allowed relative increase of the paired median latency ratio's upper bound"
    )


class RegistryConfig(_Section):
    model_name: str = Field(min_length=1)
    selection: SelectionRule = SelectionRule()
    gates: Gates = Gates()
    register_on_gate_failure: bool = False


class LoraOptions(_Section):
    """The LoRA adapter; `target_modules` defaults to the architecture's attention projections."""

    r: int = Field(8, ge=1, description="the adapter's rank")
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] | None = Field(None, min_length=1)


MERGE_REFUSAL = (
    "false is not supported: the ONNX GenAI builder and both flavors need one ordinary checkpoint, not a base "
    "plus an adapter; leave merge true (the adapter is still logged, as the finetune run's adapter/ artifact)"
)


class SuiteSplitDataset(_Section):
    """Training rows from the built-in eval suite: the parts `evaluation.split` does not evaluate, each item's
    question with its reference as the answer. Disjoint from the eval items by construction (the leakage guard
    still checks it)."""

    from_eval_suite: Literal["other_parts"]
    max_rows: int | None = Field(None, gt=0, description="the first rows only (a CPU budget); null: all of them")


class TrainerBudget(TypedDict, total=False):
    """How long the Trainer trains, as its own argument names: one of the two."""

    max_steps: int
    num_train_epochs: float


class TrainingConfig(_Section):
    """Fine-tune the fetched checkpoint before it is built, logged, evaluated and registered."""

    dataset: SuiteSplitDataset | Path = Field(
        description="chat JSON Lines, one {'messages': [...]} a row ending with the answer; or a split of the suite"
    )
    method: Literal["lora"] = "lora"
    lora: LoraOptions = LoraOptions()
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_seq_length: int = Field(512, ge=8)
    # Off: a row longer than max_seq_length is refused instead of being trained on cut.
    truncate: bool = False
    seed: int = 0
    merge: bool = True
    assistant_only_loss: bool = True
    held_out_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="rows kept out of training for a final loss")
    logging_steps: int = Field(1, ge=1)
    # On: evaluate also measures the base (the fetched checkpoint before finetune) in both flavors on the same
    # items, and register promotes only when the paired interval on candidate - base accuracy lies above 0.
    require_improvement_over_base: bool = False

    @model_validator(mode="after")
    def _one_budget(self) -> TrainingConfig:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("training: give either epochs or max_steps, not both")
        return self

    @field_validator("merge")
    @classmethod
    def _merged(cls, merge: bool) -> bool:
        # An unmerged adapter would need a peft-aware transformers flavor and cannot go through the ONNX GenAI
        # builder at all (it reads a plain checkpoint); the adapter is logged beside the merged weights anyway.
        if not merge:
            raise ValueError(MERGE_REFUSAL)
        return merge

    @property
    def budget(self) -> TrainerBudget:
        """The Trainer's arguments for how long to train: max_steps when given, else epochs (1 by default)."""
        if self.max_steps is not None:
            return {"max_steps": self.max_steps}
        return {"num_train_epochs": self.epochs or 1.0}


class PipelineConfig(_Section):
    """The whole pipeline configuration, one YAML file per model."""

    source: SourceConfig
    generation: GenerationConfig = GenerationConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    evaluation: EvaluationConfig
    registry: RegistryConfig
    training: TrainingConfig | None = None

    @model_validator(mode="after")
    def _one_variant_to_fine_tune(self) -> PipelineConfig:
        if self.training is not None and len(self.source.variants) > 1:
            raise ValueError("source.builder: training builds one variant of the fine-tuned model; give one mapping")
        return self

    @model_validator(mode="after")
    def _suite_split_needs_a_split_suite(self) -> PipelineConfig:
        from_suite = self.training is not None and isinstance(self.training.dataset, SuiteSplitDataset)
        if from_suite and (self.evaluation.suite is None or self.evaluation.split is None):
            raise ValueError(
                "training.dataset: from_eval_suite takes the parts of evaluation.suite that evaluation.split "
                "does not evaluate: set both evaluation.suite and evaluation.split (parts >= 2)"
            )
        return self

    def section_hash(self, *sections: str) -> str:
        """A stable hash of some sections (or dotted fields such as `source.trust_remote_code`).

        It is the same from any checkout on any machine: the eval set counts by its digest and a
        local source without its path (its content is the fetched revision, keyed separately).
        """
        payload = {name: self._portable(name) for name in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def config_hash(self) -> str:
        """An absent optional section counts as nothing: adding the `training` key changed no existing hash."""
        return self.section_hash(*(name for name in type(self).model_fields if getattr(self, name) is not None))

    def field_is_set(self, dotted: str) -> bool:
        """Whether a section, or a dotted field of one, is present and not null."""
        section, _, field = dotted.partition(".")
        value = getattr(self, section)
        return value is not None and (not field or getattr(value, field) is not None)

    def _portable(self, dotted: str):
        section, _, field = dotted.partition(".")
        if getattr(self, section) is None:
            return None
        data = getattr(self, section).model_dump(mode="json")
        if section == "evaluation" and self.evaluation.eval_set is not None:
            data["eval_set"] = "sha256:" + eval_set_digest(self.evaluation.eval_set)
        if section == "evaluation" and self.evaluation.lm_eval_task is not None:
            data["lm_eval_task"] = "sha256:" + lm_eval_task_digest(self.evaluation.lm_eval_task)
        if section == "source" and self.source.kind == "local":
            data["model"] = LOCAL_PREFIX
        if section == "training" and self.training is not None:
            if not field:  # a promotion rule, not how to train: only register reads it, by its dotted name
                data.pop("require_improvement_over_base")
            if isinstance(self.training.dataset, SuiteSplitDataset):
                # The rows are the suite's other parts: they follow from the suite and the split (and the suite's
                # code, in the step's code hash); the finetune run records their content digest.
                data["dataset"]["split_of"] = {
                    "suite": self.evaluation.suite.model_dump(mode="json") if self.evaluation.suite else None,
                    "split": self.evaluation.split.model_dump(mode="json") if self.evaluation.split else None,
                }
            else:
                data["dataset"] = "sha256:" + dataset_digest(self.training.dataset)
        if section == "source" and self.source.chat_template is not None:
            data["chat_template"] = "sha256:" + sha256_file(self.source.chat_template)
        return data[field] if field else data


def eval_set_digest(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"evaluation.eval_set: file not found: {path}")
    return sha256_file(path)


def dataset_digest(path: Path) -> str:
    """The training set by its content: what the cache key and the registered identity hold, never the path."""
    if not path.is_file():
        raise ConfigError(f"training.dataset: file not found: {path}")
    return sha256_file(path)


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Load and validate a config; relative paths inside it resolve against the file's folder."""
    config_path = Path(path)
    if not config_path.is_file():
        raise ConfigError(f"config file not found: {config_path}")
    try:
        raw = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {config_path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {config_path} must hold a mapping at the top level")
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid config {config_path}:\n{_describe(error)}") from None
    return _resolve_paths(config, config_path.resolve().parent)


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"] if part not in (ONE_VARIANT, SEVERAL_VARIANTS))
        key = key or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {problem['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _resolve_paths(config: PipelineConfig, base: Path) -> PipelineConfig:
    update: dict = {}
    evaluation: dict = {}
    if config.evaluation.eval_set is not None:
        evaluation["eval_set"] = base / config.evaluation.eval_set
    if config.evaluation.lm_eval_task is not None:
        task = base / config.evaluation.lm_eval_task
        if not task.is_file():
            raise ConfigError(f"evaluation.lm_eval_task: file not found: {task}")
        evaluation["lm_eval_task"] = task
    if evaluation:
        update["evaluation"] = config.evaluation.model_copy(update=evaluation)
    if config.training is not None and isinstance(config.training.dataset, Path):
        update["training"] = config.training.model_copy(update={"dataset": base / config.training.dataset})
    source: dict = {}
    if config.source.kind == "local":
        source["model"] = LOCAL_PREFIX + str(base / config.source.name)  # an absolute path stays as it is
    if config.source.chat_template is not None:
        template = base / config.source.chat_template
        if not template.is_file():
            raise ConfigError(f"source.chat_template: file not found: {template}")
        source["chat_template"] = template
    update["source"] = config.source.model_copy(update=source)
    return config.model_copy(update=update)


class Settings(BaseModel):
    """Process settings taken from the environment, read in one place."""

    model_config = ConfigDict(frozen=True)

    cache_dir: Path
    hf_token: str | None = Field(default=None, repr=False)
    hf_offline: bool = False

    @classmethod
    def from_environment(cls) -> Settings:
        cache = os.environ.get("SLMFLOW_CACHE_DIR") or Path.home() / ".cache" / "slmflow"
        return cls(
            cache_dir=Path(cache),
            hf_token=os.environ.get("HF_TOKEN") or None,
            hf_offline=os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"},
        )
