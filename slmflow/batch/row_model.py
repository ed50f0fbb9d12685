"""A pyfunc wrapper that scores chat rows with a logged chat model and gives every row its own result.

Spark hands `predict` a batch of rows; the wrapped model validates a batch as a whole (one bad row is
a bad request for all). Here a refused batch is split in halves until every bad row stands alone with
its error, so good rows are still answered, and still in batches. Rows are never validated here: the
wrapped model's own `predict` decides what is bad.

This file is the wrapper's code (models-from-code): it imports nothing from slmflow, so a Spark
executor needs only the model folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE, ErrorCode

WRAPPED_ARTIFACT = "chat_model"
NO_ERROR = ""  # Spark's struct conversion turns None into "None" in a string column; "" is mapped back to null
# Refusals that concern the rows sent: a smaller batch isolates them (a deadline may pass for fewer rows).
ROW_REFUSAL_CODES = frozenset(
    ErrorCode.Name(code) for code in (INVALID_PARAMETER_VALUE, BAD_REQUEST, DEADLINE_EXCEEDED)
)
_ROW_PREFIX = re.compile(r"^row \d+: ")

Predict = Callable[[pd.DataFrame], Any]


def score_rows(predict: Predict, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """One result per row, in order: the answer, or the error the model gave that row.

    Rows are sent in groups that fill the same fields, without the empty columns: Spark gives a
    missing number as a nullable <NA> that a model's schema check cannot take as a long.
    """
    rows = rows.reset_index(drop=True)
    filled = rows.notna()
    groups: dict[tuple[bool, ...], list[int]] = {}
    for position, pattern in enumerate(filled.itertuples(index=False, name=None)):
        groups.setdefault(pattern, []).append(position)
    results: list[dict[str, Any]] = [{}] * len(rows)
    for pattern, positions in groups.items():
        columns = [column for column, present in zip(rows.columns, pattern, strict=True) if present]
        for position, result in zip(positions, _score_batch(predict, rows.loc[positions, columns]), strict=True):
            results[position] = result
    return results


def _score_batch(predict: Predict, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Score rows together; when the model refuses them, halve until each bad row stands alone."""
    rows = rows.reset_index(drop=True)
    try:
        predictions = per_row(predict(rows), len(rows))
    except MlflowException as error:
        if error.error_code not in ROW_REFUSAL_CODES:
            raise
        if len(rows) == 1:
            return [error_result(_ROW_PREFIX.sub("", error.message))]
        half = len(rows) // 2
        return _score_batch(predict, rows.iloc[:half]) + _score_batch(predict, rows.iloc[half:])
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


class RowResultsModel(mlflow.pyfunc.PythonModel):
    """Loads the wrapped chat model once per load (Spark loads once per Python worker) and scores batches."""

    def load_context(self, context) -> None:
        self.chat_model = mlflow.pyfunc.load_model(context.artifacts[WRAPPED_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return pd.DataFrame(score_rows(self.chat_model.predict, model_input))


mlflow.models.set_model(RowResultsModel())
