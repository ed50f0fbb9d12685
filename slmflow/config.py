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
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmflow.digests import sha256_file
from slmflow.errors import ConfigError
from slmflow.policy import DEFAULT_SETTINGS, MaxTokens, RequestLimits, Seed, Temperature, TopK, TopP

BUILTIN_PREFIX = "builtin:"
LOCAL_PREFIX = "local:"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxVariant(_Section):
    """A prebuilt ONNX GenAI model on the hub, used instead of running the builder."""

    repo: str
    revision: str = Field(pattern=r"^[0-9a-f]{40}$", description="the 40-hex commit sha")
    subfolder: str = ""


class BuilderOptions(_Section):
    """Options for `onnxruntime_genai.models.builder` when no prebuilt variant is given."""

    precision: Literal["int4", "fp32", "fp16"] = "int4"
    execution_provider: Literal["cpu"] = "cpu"
    # 32: on SmolLM2-135M, int4 at block 128 answered 16 of 50 capitals right, at block 32 as many as fp32 (35).
    block_size: int = Field(32, ge=16)
    accuracy_level: int = Field(4, ge=0, le=4)


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
    builder: BuilderOptions = BuilderOptions()
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


class RuntimeConfig(_Section):
    """How the ONNX model runs on this host."""

    intra_op_num_threads: int = Field(0, ge=0, description="0 lets onnxruntime choose")
    truncate_long_prompts: bool = False


class EvaluationConfig(_Section):
    eval_set: Path
    max_examples: int | None = Field(None, gt=0)


class SelectionRule(_Section):
    """How register picks the candidate among the evaluated flavors."""

    rule: Literal["best_accuracy", "prefer_onnx"] = "best_accuracy"
    onnx_accuracy_margin: float = Field(0.05, ge=0.0, le=1.0)


class Gates(_Section):
    """What a candidate must reach to be registered and promoted."""

    min_accuracy: float = Field(0.0, ge=0.0, le=1.0)
    min_tokens_per_second: float = Field(0.0, ge=0.0)
    max_accuracy_regression: float = Field(0.0, ge=0.0, le=1.0)
    max_latency_regression: float | None = Field(
        None, ge=0.0, description="allowed relative p50 latency increase against the champion"
    )


class RegistryConfig(_Section):
    model_name: str = Field(min_length=1)
    selection: SelectionRule = SelectionRule()
    gates: Gates = Gates()
    register_on_gate_failure: bool = False


class PipelineConfig(_Section):
    """The whole pipeline configuration, one YAML file per model."""

    source: SourceConfig
    generation: GenerationConfig = GenerationConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    evaluation: EvaluationConfig
    registry: RegistryConfig

    def section_hash(self, *sections: str) -> str:
        """A stable hash of some sections (or dotted fields such as `source.trust_remote_code`).

        It is the same from any checkout on any machine: the eval set counts by its digest and a
        local source without its path (its content is the fetched revision, keyed separately).
        """
        payload = {name: self._portable(name) for name in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def config_hash(self) -> str:
        return self.section_hash(*type(self).model_fields)

    def _portable(self, dotted: str):
        section, _, field = dotted.partition(".")
        data = getattr(self, section).model_dump(mode="json")
        if section == "evaluation":
            data["eval_set"] = "sha256:" + eval_set_digest(self.evaluation.eval_set)
        if section == "source" and self.source.kind == "local":
            data["model"] = LOCAL_PREFIX
        if section == "source" and self.source.chat_template is not None:
            data["chat_template"] = "sha256:" + sha256_file(self.source.chat_template)
        return data[field] if field else data


def eval_set_digest(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"evaluation.eval_set: file not found: {path}")
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
        key = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {problem['msg']}")
    return "\n".join(lines)


def _resolve_paths(config: PipelineConfig, base: Path) -> PipelineConfig:
    evaluation = config.evaluation.model_copy(update={"eval_set": base / config.evaluation.eval_set})
    source: dict = {}
    if config.source.kind == "local":
        source["model"] = LOCAL_PREFIX + str(base / config.source.name)  # an absolute path stays as it is
    if config.source.chat_template is not None:
        template = base / config.source.chat_template
        if not template.is_file():
            raise ConfigError(f"source.chat_template: file not found: {template}")
        source["chat_template"] = template
    return config.model_copy(update={"evaluation": evaluation, "source": config.source.model_copy(update=source)})


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
