"""OpenAI chat response shapes, declared once as typed models: built by the ONNX model, the evaluation and
the server, and published in the server's OpenAPI document.

Requests are parsed and validated by the typed request model in `slmflow.chat.request`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class ChunkDelta(BaseModel):
    """What a chunk adds: the role first, then content pieces; a field not sent is left out."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def payload(self, include_usage: bool = False) -> dict[str, Any]:
        """The JSON object sent: `usage` only when the client asked for it (null but in the last chunk)."""
        data = self.model_dump(exclude=None if include_usage else {"usage"})
        for choice, typed in zip(data["choices"], self.choices, strict=True):
            choice["delta"] = typed.delta.model_dump(exclude_none=True)
        return data


def chat_completion(
    content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, model: str
) -> dict[str, Any]:
    completion = ChatCompletion(
        model=model,
        choices=[Choice(message=AssistantMessage(content=content), finish_reason=finish_reason)],
        usage=Usage.of(prompt_tokens, completion_tokens),
    )
    return completion.model_dump()


def chat_completion_chunk(
    completion_id: str, delta: dict[str, str], finish_reason: str | None, model: str
) -> dict[str, Any]:
    choice = ChunkChoice(delta=ChunkDelta(**delta), finish_reason=finish_reason)
    return ChatCompletionChunk(id=completion_id, model=model, choices=[choice]).payload()


def single_prediction(prediction: Any) -> Any:
    """One request's prediction, whether a flavor returns it alone or as a list of one."""
    if isinstance(prediction, list | tuple):
        if len(prediction) != 1:
            raise ValueError(f"expected one prediction, got {len(prediction)}")
        return prediction[0]
    return prediction


def answer_text(prediction: Any) -> str:
    """The assistant's text from any flavor's prediction (a completion dict, a list of them, a string)."""
    prediction = single_prediction(prediction)
    if isinstance(prediction, str):
        return prediction
    if isinstance(prediction, Mapping) and "choices" in prediction:
        return prediction["choices"][0]["message"]["content"] or ""
    raise ValueError(f"unrecognised prediction shape: {type(prediction).__name__}")
