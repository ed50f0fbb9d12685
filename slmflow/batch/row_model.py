"""A pyfunc wrapper that scores JSON chat requests with a logged chat model, one result per row.

Spark hands `predict` a batch of rows, each one request as a JSON object. The wrapped model
validates a batch as a whole (one bad row is a bad request for all); here a refused batch is split in
halves until every bad row stands alone with its error, so good rows are still answered, and still
in batches. Requests are never validated here: the wrapped model's own `predict` decides what is
bad, exactly as when it is served.

This file is the wrapper's code (models-from-code): it imports nothing from slmflow, so a Spark
executor needs only the model folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE, ErrorCode
from mlflow.pyfunc import PythonModel

WRAPPED_ARTIFACT = "chat_model"
REQUEST_COLUMN = "request"  # one JSON object per row
NO_ERROR = ""  # Spark's struct conversion turns None into "None" in a string column; "" is mapped back to null
QUOTE_CHARS = 200
# Refusals that concern the rows sent: a smaller batch isolates them (a deadline may pass for fewer rows).
ROW_REFUSAL_CODES = frozenset(
    ErrorCode.Name(code) for code in (INVALID_PARAMETER_VALUE, BAD_REQUEST, DEADLINE_EXCEEDED)
)
_ROW_PREFIX = re.compile(r"^row \d+: ")

Predict = Callable[[list[dict[str, Any]]], Any]


def score_requests(predict: Predict, lines: Sequence[str]) -> list[dict[str, Any]]:
    """One result per JSON line, in order: the answer, or why that row was not answered."""
    results: list[dict[str, Any]] = [{}] * len(lines)
    requests: dict[int, dict[str, Any]] = {}
    for position, line in enumerate(lines):
        try:
            request = json.loads(line)
        except (TypeError, json.JSONDecodeError) as error:
            results[position] = error_result(f"not a JSON object ({error}): {str(line)[:QUOTE_CHARS]}")
            continue
        if isinstance(request, dict):
            requests[position] = request
        else:
            results[position] = error_result(f"a request must be a JSON object, got: {str(line)[:QUOTE_CHARS]}")
    if requests:
        for position, result in zip(requests, score_rows(predict, list(requests.values())), strict=True):
            results[position] = result
    return results


def score_rows(predict: Predict, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score rows together; when the model refuses them, halve until each bad row stands alone."""
    try:
        predictions = per_row(predict(rows), len(rows))
    except MlflowException as error:
        if error.error_code not in ROW_REFUSAL_CODES:
            raise
        if len(rows) == 1:
            return [error_result(_ROW_PREFIX.sub("", error.message))]
        half = len(rows) // 2
        return score_rows(predict, rows[:half]) + score_rows(predict, rows[half:])
    return [answer_result(prediction) for prediction in predictions]


def per_row(prediction: Any, count: int) -> list[Any]:
    """The model's output as a list with one item per row (a single chat row may come back alone)."""
    items = [prediction] if isinstance(prediction, Mapping | str) else list(prediction)
    if len(items) != count:
        raise ValueError(f"the model returned {len(items)} results for {count} rows")
    return items


def answer_result(prediction: Any) -> dict[str, Any]:
    if isinstance(prediction, str):  # a raw `prompt` row is answered with plain text
        return {"answer": prediction, "finish_reason": None, "usage": _usage(None), "error": NO_ERROR}
    choice = prediction["choices"][0]
    return {
        "answer": choice["message"]["content"] or "",
        "finish_reason": choice["finish_reason"],
        "usage": _usage(prediction.get("usage")),
        "error": NO_ERROR,
    }


def error_result(message: str) -> dict[str, Any]:
    return {"answer": None, "finish_reason": None, "usage": _usage(None), "error": message or "refused"}


def _usage(usage: Mapping[str, int] | None) -> dict[str, int | None]:
    usage = usage or {}
    return {name: usage.get(name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}


class RowResultsModel(PythonModel):
    """Loads the wrapped chat model (Spark loads this once per Python worker) and scores batches.

    `model_config["params"]` are the job's generation defaults, passed to the chat model as its
    params: a row's own value wins."""

    def load_context(self, context) -> None:
        self.chat_model = mlflow.pyfunc.load_model(context.artifacts[WRAPPED_ARTIFACT])
        self.params = dict((context.model_config or {}).get("params") or {}) or None

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        def predict_rows(rows: list[dict[str, Any]]) -> Any:
            return self.chat_model.predict(rows, params=self.params)

        return pd.DataFrame(score_requests(predict_rows, list(model_input[REQUEST_COLUMN])))


mlflow.models.set_model(RowResultsModel())
