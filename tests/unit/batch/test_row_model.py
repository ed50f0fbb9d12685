"""The per-row wrapper's logic, without a model: bad rows isolated, good rows still batched."""

from __future__ import annotations

import json

import pytest
from mlflow.exceptions import MlflowException

from slmflow.batch.row_model import NO_ERROR, per_row, score_requests


def completion(text: str) -> dict:
    return {
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


class FakeChatModel:
    """Refuses a whole batch when any row is bad, as a chat model validating a request does."""

    def __init__(self, single_row_alone: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.single_row_alone = single_row_alone

    def predict(self, rows: list[dict]):
        texts = [row["text"] for row in rows]
        bad = [index for index, text in enumerate(texts) if text.startswith("bad")]
        if bad:
            raise MlflowException.invalid_parameter_value(f"row {bad[0]}: '{texts[bad[0]]}' is refused")
        self.batches.append(texts)
        if self.single_row_alone and len(texts) == 1:
            return completion(texts[0].upper())
        return [completion(text.upper()) for text in texts]


def lines(*texts: str) -> list[str]:
    return [json.dumps({"text": text}) for text in texts]


def test_bad_rows_get_their_own_error_and_good_rows_stay_batched():
    model = FakeChatModel()
    results = score_requests(model.predict, lines("a", "b", "bad one", "c", "d", "e", "f", "bad two"))
    assert [r["answer"] for r in results] == ["A", "B", None, "C", "D", "E", "F", None]
    assert [r["error"] for r in results] == [NO_ERROR] * 2 + ["'bad one' is refused"] + [NO_ERROR] * 4 + [
        "'bad two' is refused"
    ]
    assert results[0]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert results[2]["usage"] == {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
    assert model.batches == [["a", "b"], ["c"], ["d", "e"], ["f"]]  # halves, not row by row


def test_lines_that_are_not_json_objects_get_an_error_and_the_rest_are_scored_together():
    model = FakeChatModel()
    results = score_requests(model.predict, ["{not json", *lines("a"), "[1, 2]", *lines("b")])
    assert results[0]["error"].startswith("not a JSON object") and "{not json" in results[0]["error"]
    assert results[2]["error"] == "a request must be a JSON object, got: [1, 2]"
    assert [results[1]["answer"], results[3]["answer"]] == ["A", "B"]
    assert model.batches == [["a", "b"]]


def test_a_batch_of_one_returned_alone_is_one_row():
    results = score_requests(FakeChatModel(single_row_alone=True).predict, lines("x"))
    assert results[0]["answer"] == "X" and results[0]["finish_reason"] == "stop"


def test_errors_other_than_refused_rows_stop_the_batch():
    def broken(rows):
        raise MlflowException("the runtime crashed")

    with pytest.raises(MlflowException, match="crashed"):
        score_requests(broken, lines("a", "b"))


def test_a_result_count_that_does_not_match_the_rows_is_an_error():
    with pytest.raises(ValueError, match="2 results for 3 rows"):
        per_row([completion("a"), completion("b")], 3)
