"""The generation policy a model carries: typed sampling settings, their defaults, and per-request limits.

One definition of every field and bound, used by the pipeline config (`generation`), the chat request
model, the pyfunc model, `mlflow models serve`, Spark and the OpenAI-compatible server alike.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

INT32_MAX = 2**31 - 1  # onnxruntime-genai reads seeds and lengths as int32
MAX_STOP_STRINGS = 4  # as OpenAI
MAX_STOP_CHARS = 256
# C0 controls (but tab, newline, carriage return), DEL and lone surrogates: the chat template and
# the tokenizer cannot carry them (a NUL silently ends the prompt there).
_FORBIDDEN_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def plain(value: Any) -> Any:
    """Numpy scalars and arrays (what a DataFrame hands over) as plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return value.tolist()
    return value


def _integer(value: Any) -> int:
    value = plain(value)
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)  # a DataFrame column with a missing value holds floats
    if not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def _real(value: Any) -> float:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


def _stop_strings(value: Any) -> tuple[str, ...]:
    value = plain(value)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) and s for s in value):
        raise ValueError("must be a non-empty string or a list of them")
    if len(value) > MAX_STOP_STRINGS:
        raise ValueError(f"takes at most {MAX_STOP_STRINGS} strings, got {len(value)}")
    if any(len(s) > MAX_STOP_CHARS for s in value):
        raise ValueError(f"strings must be at most {MAX_STOP_CHARS} characters")
    for s in value:
        refuse_control_characters(s)
    return tuple(value)


def refuse_control_characters(text: str) -> str:
    found = _FORBIDDEN_CHARACTERS.search(text)
    if found:
        raise ValueError(
            f"holds the control character U+{ord(found.group()):04X} at position {found.start()}, "
            "which the model cannot read"
        )
    return text


# The typed fields: one definition of each limit, used by requests and by the pipeline config.
MaxTokens = Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_integer)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0), BeforeValidator(_real)]
TopP = Annotated[float, Field(gt=0.0, le=1.0), BeforeValidator(_real)]
TopK = Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_integer)]
Seed = Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(_integer)]
MinTokens = Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(_integer)]
StopStrings = Annotated[tuple[str, ...], BeforeValidator(_stop_strings)]
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "min_tokens")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ResponseFormat(Strict):
    """A constraint on the answer's shape (OpenAI's `response_format`), applied by constrained decoding.

    The schema is kept as canonical JSON text, so that settings stay hashable and equal schemas have
    equal batch keys."""

    json_schema: str = Field(description="the JSON Schema the answer must match, as canonical JSON text")

    def guidance(self) -> tuple[str, str]:
        """The (type, data) pair for onnxruntime-genai's `GeneratorParams.set_guidance`.

        Unless the schema sets its own `x-guidance` options, the answer is compact JSON: with flexible
        whitespace a small model can fill its whole budget with blanks (the tiny test model did)."""
        schema = json.loads(self.json_schema)
        if isinstance(schema, dict) and "x-guidance" not in schema:
            schema["x-guidance"] = {"whitespace_flexible": False}
        return "json_schema", json.dumps(schema)


class SamplingSettings(Strict):
    """The generation settings of one row, defaults filled in."""

    max_tokens: MaxTokens = 64
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    top_k: TopK = 50
    seed: Seed | None = None
    stop: StopStrings = ()
    min_tokens: MinTokens = 0
    response_format: ResponseFormat | None = None
    max_tokens_explicit: bool = Field(False, description="the request asked for max_tokens itself")

    @model_validator(mode="after")
    def _min_tokens_can_be_honoured(self) -> SamplingSettings:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.min_tokens and self.response_format is not None:
            # The runtime fails once the grammar has ended while min_length still holds back the end.
            raise ValueError("min_tokens cannot be combined with response_format: the schema decides where it ends")
        return self

    def batch_key(self) -> tuple:
        """Rows with equal keys can share one generator. Stop strings and max_tokens are per row;
        min_tokens is not (it holds back EOS for the whole batch), nor is response_format (the grammar
        masks the batch's tokens), so constrained and free rows never share a generator. Greedy rows
        ignore the sampling knobs."""
        if self.temperature == 0:
            return (0.0, self.min_tokens, self.response_format)
        return (self.temperature, self.top_p, self.top_k, self.seed, self.min_tokens, self.response_format)


DEFAULT_SETTINGS = SamplingSettings()


class RequestLimits(Strict):
    """Bounds on the work one request may ask for."""

    max_rows: int = Field(64, ge=1, description="rows per request")
    max_messages: int = Field(
        512, ge=1, description="chat messages per row, checked before the prompt is rendered or tokenized"
    )
    max_total_tokens: int = Field(32768, ge=1, description="rows x (prompt tokens + max_tokens) per request")
    max_request_chars: int = Field(
        4_000_000, ge=1, description="characters of text per request, checked before any tokenizing"
    )
    timeout_seconds: float = Field(
        50.0, gt=0, description="generation stops after this; below the scoring server's 60 s timeout"
    )


class ServingPolicy(Strict):
    """What a logged model serves with: its default settings and its per-request limits.

    Built once from the config's `generation` section, carried by the logged model, and applied by
    the pyfunc model, `mlflow models serve` and the OpenAI-compatible server alike."""

    defaults: SamplingSettings = DEFAULT_SETTINGS
    limits: RequestLimits = RequestLimits()

    def as_mapping(self) -> dict[str, Any]:
        """The entry a logged model carries, in its `model_config` or its MLmodel `metadata`."""
        return {SERVING_POLICY_KEY: self.model_dump(mode="json")}

    @classmethod
    def from_mapping(cls, mapping: Any) -> ServingPolicy:
        """The policy in a logged model's `model_config` or `metadata` (JSON lists come back as tuples);
        the defaults if it carries none."""
        stored = (mapping or {}).get(SERVING_POLICY_KEY)
        return cls() if stored is None else cls.model_validate(stored, strict=False)


SERVING_POLICY_KEY = "serving_policy"
