"""The `onnx-chat` MLflow pyfunc model: OpenAI chat requests in, `chat.completion` answers out, over the
ONNX GenAI engine. MLflow builds it from `pyfunc_entry.py` (models-from-code)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from slmflow import tags
from slmflow.chat.onnx.engine import OnnxChatEngine
from slmflow.chat.onnx.rows import Completion
from slmflow.chat.request import ChatRequest, parse_requests
from slmflow.chat.response import chat_completion, chat_completion_chunk
from slmflow.errors import BadRequestError, DeadlineExceededError
from slmflow.policy import ServingPolicy

ONNX_ARTIFACT = "onnx_model"
_logger = logging.getLogger(__name__)


class OnnxChatModel(PythonModel):
    """Pyfunc chat model over an ONNX GenAI folder logged as the `onnx_model` artifact.

    `predict` returns one answer per row, always a list (as the transformers chat flavor does):
    a `chat.completion` for a `messages` row, a string for a `prompt` row."""

    def load_context(self, context) -> None:
        model_config = dict(context.model_config or {})
        self.engine = OnnxChatEngine(
            context.artifacts[ONNX_ARTIFACT],
            intra_op_num_threads=int(model_config.get("intra_op_num_threads", 0)),
            truncate_long_prompts=bool(model_config.get("truncate_long_prompts", False)),
        )
        self.policy = ServingPolicy.from_mapping(model_config)
        self.model_name = str(model_config.get("model_name", tags.ONNX_MODEL_NAME))

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list:
        with _refusals():
            requests = parse_requests(model_input, params, self.policy.defaults, self.policy.limits)
            completions = self.engine.generate(requests, self.policy.limits)
        return [self._output(request, done) for request, done in zip(requests, completions, strict=True)]

    def predict_stream(self, context, model_input, params: dict[str, Any] | None = None):
        with _refusals():
            requests = parse_requests(model_input, params, self.policy.defaults, self.policy.limits)
            if len(requests) != 1:
                raise BadRequestError("streaming takes exactly one request")
            request = requests[0]
            pieces = self.engine.stream(request, self.policy.limits)
            first = next(pieces)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if request.is_chat:
            yield chat_completion_chunk(completion_id, {"role": "assistant", "content": ""}, None, self.model_name)
        with _refusals():
            for piece, final in itertools.chain([first], pieces):
                if final is not None:
                    if request.is_chat:
                        yield chat_completion_chunk(completion_id, {}, final.finish_reason, self.model_name)
                elif request.is_chat:
                    yield chat_completion_chunk(completion_id, {"content": piece}, None, self.model_name)
                else:
                    yield piece

    def _output(self, request: ChatRequest, done: Completion):
        if not request.is_chat:
            return done.text
        return chat_completion(
            done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens, self.model_name
        )


class _Refusal(MlflowException):
    """An MlflowException whose message stays as written.

    MLflow's scoring server prefixes the message of any MlflowException raised by predict with the
    whole input ("Failed to predict data '...'"), echoing megabytes back; this message ignores that."""

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """Request errors as MLflow errors naming the field; anything unexpected as one generic message
    with an error id, the details only in the server log."""
    try:
        yield
    except BadRequestError as error:
        raise _Refusal(error.message, error_code=INVALID_PARAMETER_VALUE, param=error.param) from None
    except DeadlineExceededError as error:
        raise _Refusal(str(error), error_code=DEADLINE_EXCEEDED) from None
    except MlflowException:
        raise
    except Exception:
        error_id = uuid.uuid4().hex[:12]
        _logger.exception("internal error %s while generating", error_id)
        raise _Refusal(
            f"internal error while generating (error id {error_id}; the details are in the server log)",
            error_code=INTERNAL_ERROR,
            error_id=error_id,
        ) from None
