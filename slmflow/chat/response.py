"""OpenAI chat response shapes, shared by the ONNX model, the evaluation and the server.

Requests are parsed and validated by the typed request model in `slmflow.chat.request`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any


def chat_completion(
    content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, model: str
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chat_completion_chunk(
    completion_id: str, delta: dict[str, str], finish_reason: str | None, model: str
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


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
