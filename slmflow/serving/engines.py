"""The served model: any MLflow model URI of either chat flavor, behind the batcher's step-wise engine API.

An `onnx-chat` model hands over its own `OnnxChatEngine`, which decodes rows together token by
token. A `transformers-chat` model has only `predict`: `PredictEngine` answers one request per
step with the whole text, so a streaming client gets the answer as one chunk.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import mlflow

from slmflow import tags
from slmflow.chat.onnx.engine import OnnxChatEngine
from slmflow.chat.onnx.rows import Completion, refuse_beyond_total_tokens
from slmflow.chat.request import ChatRequest
from slmflow.chat.response import single_prediction
from slmflow.chat.stopping import first_stop
from slmflow.errors import BadRequestError
from slmflow.policy import RequestLimits, SamplingSettings, ServingPolicy
from slmflow.serving.batcher import Engine


@dataclass(frozen=True)
class ServedModel:
    name: str
    flavor: str
    engine: Engine[Any]
    policy: ServingPolicy
    context_length: int
    streams_tokens: bool
    created: int


def served_name(model_uri: str, fallback: str) -> str:
    """`models:/tiny-phi3-chat@champion` serves as `tiny-phi3-chat`; other URIs by their flavor's name."""
    if model_uri.startswith("models:/"):
        name = model_uri.removeprefix("models:/").split("@")[0].split("/")[0]
        if name and not name.startswith("m-"):  # models:/<model_id> names no registered model
            return name
    return fallback


def load_served_model(model_uri: str) -> ServedModel:
    """Load the model once, from any MLflow model URI, and pick its engine by flavor. The serving
    policy is the one the logged model carries (`slmflow.policy.ServingPolicy`)."""
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    engine: Engine[Any]
    if "transformers" in pyfunc.metadata.flavors:
        policy = ServingPolicy.from_mapping(pyfunc.metadata.metadata)
        flavor, engine = tags.TRANSFORMERS_MODEL_NAME, PredictEngine(pyfunc)
    else:
        python_model = pyfunc.unwrap_python_model()
        onnx_engine = getattr(python_model, "engine", None)
        if not isinstance(onnx_engine, OnnxChatEngine):
            raise ValueError(f"{model_uri} is neither an onnx-chat nor a transformers-chat model")
        flavor, engine = tags.ONNX_MODEL_NAME, onnx_engine
        policy = python_model.policy
    return ServedModel(
        name=served_name(model_uri, flavor),
        flavor=flavor,
        engine=engine,
        policy=policy,
        context_length=engine.context_length,
        streams_tokens=flavor == tags.ONNX_MODEL_NAME,
        created=int(time.time()),
    )


@dataclass(eq=False)
class PredictRow:
    request: ChatRequest
    prompt_tokens: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0

    @property
    def settings(self) -> SamplingSettings:
        return self.request.settings

    @property
    def visible_text(self) -> str:
        """Nothing until the whole answer is in: then the batcher sends the completion's text."""
        return ""

    def cancel(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "cancelled"


class PredictEngine:
    """A transformers-chat pyfunc behind the step-wise engine API: one request, one step, whole answer."""

    max_batch_size = 1

    def __init__(self, pyfunc) -> None:
        self.pyfunc = pyfunc
        pipeline = pyfunc.get_raw_model()
        self.tokenizer = pipeline.tokenizer
        self.context_length = int(pipeline.model.config.max_position_embeddings)

    def prepare(self, request: ChatRequest, limits: RequestLimits | None = None) -> PredictRow:
        if not request.is_chat:
            raise BadRequestError("the transformers-chat model takes chat 'messages' only", "messages")
        prompt_ids = self.tokenizer.apply_chat_template(list(request.chat_messages), add_generation_prompt=True)
        if hasattr(prompt_ids, "keys"):  # transformers 5 returns a BatchEncoding
            prompt_ids = prompt_ids["input_ids"]
        prompt_tokens = len(prompt_ids)
        settings = request.settings
        if prompt_tokens + settings.max_tokens > self.context_length and (
            settings.max_tokens_explicit or prompt_tokens >= self.context_length
        ):
            raise BadRequestError(
                f"the prompt is {prompt_tokens} tokens and asks for up to {settings.max_tokens} new ones, "
                f"beyond the model's context of {self.context_length} tokens",
                param="max_tokens" if settings.max_tokens_explicit else "messages",
                code="context_length_exceeded",
            )
        if limits is not None:
            refuse_beyond_total_tokens(prompt_tokens + settings.max_tokens, limits)
        return PredictRow(request=request, prompt_tokens=prompt_tokens)

    def batch_key(self, row: PredictRow) -> int:
        return id(row)

    def fits(self, rows: list[PredictRow]) -> bool:
        return len(rows) <= self.max_batch_size

    def decode(self, rows: list[PredictRow]) -> Generator[None, None, None]:
        for row in rows:
            if row.finish_reason is None:
                self._answer(row)
            yield None

    def _answer(self, row: PredictRow) -> None:
        settings = row.settings
        room = self.context_length - row.prompt_tokens
        body: dict[str, Any] = {
            "messages": list(row.request.chat_messages),
            "max_tokens": min(settings.max_tokens, room),
        }
        if settings.temperature > 0:
            body.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        else:
            body["do_sample"] = False
        if settings.min_tokens:
            body["min_new_tokens"] = settings.min_tokens
        if settings.seed is not None:
            import torch

            torch.manual_seed(settings.seed)
        output = single_prediction(self.pyfunc.predict(body))
        text = output["choices"][0]["message"]["content"] or ""
        finish_reason = output["choices"][0].get("finish_reason") or "stop"
        cut = first_stop(text, settings.stop)
        if cut is not None:
            text, finish_reason = text[:cut], "stop"
        row.text = text
        row.completion_tokens = int(output["usage"]["completion_tokens"])
        row.finish_reason = finish_reason

    def completion(self, row: PredictRow) -> Completion:
        return Completion(
            text=row.text,
            finish_reason=row.finish_reason or "length",
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
        )
