"""Structured outputs on the tiny model: `response_format` through constrained decoding (set_guidance).

The tiny model knows only "The capital of X is Y.": every JSON answer here exists because the grammar
forced it, and it must parse and validate against its schema, plain, streamed and beside free rows."""

import json

import jsonschema
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from slmflow.batch.row_model import score_requests
from slmflow.chat.request import parse_requests
from slmflow.errors import BadRequestError
from testkit.structured import CAPITALS, CITY_FORMAT, CITY_SCHEMA


def question(country: str, **fields) -> dict:
    return {"messages": [{"role": "user", "content": f"What is the capital of {country}?"}], **fields}


def valid(text: str) -> dict:
    answer = json.loads(text)
    jsonschema.validate(answer, CITY_SCHEMA)
    return answer


def test_a_schema_answer_parses_and_validates_greedy_and_sampled(onnx_engine):
    requests = parse_requests(
        [
            question("Spain", response_format=CITY_FORMAT),
            question("Japan", response_format=CITY_FORMAT, temperature=1.0, seed=3),
        ],
        {"max_tokens": 24},
    )
    for done in onnx_engine.generate(requests):
        valid(done.text)
        assert done.finish_reason == "stop"


def test_a_streamed_schema_answer_joins_to_the_plain_one(onnx_engine):
    [request] = parse_requests(question("Kenya", response_format=CITY_FORMAT), {"max_tokens": 24})
    pieces = list(onnx_engine.stream(request))
    streamed = "".join(piece for piece, final in pieces if final is None)
    assert len(pieces) > 2 and streamed == pieces[-1][1].text == onnx_engine.generate([request])[0].text
    valid(streamed)


def test_a_batch_mixing_constrained_and_free_rows(onnx_engine):
    countries = ["Spain", "Peru", "Kenya", "Japan"]
    rows = [question(c, response_format=CITY_FORMAT) if i % 2 == 0 else question(c) for i, c in enumerate(countries)]
    requests = parse_requests(rows, {"max_tokens": 24})
    completions = onnx_engine.generate(requests)
    for constrained in completions[0::2]:
        valid(constrained.text)
    assert [completions[1].text, completions[3].text] == [
        f"The capital of {c} is {CAPITALS[c]}." for c in ("Peru", "Japan")
    ]
    prepared = [onnx_engine.prepare(r) for r in requests]
    keys = [onnx_engine.batch_key(row) for row in prepared]
    assert keys[1] == keys[3] and len({keys[0], keys[1], keys[2]}) == 3  # constrained rows generate alone


def test_json_object_makes_the_answer_an_object(onnx_engine):
    requests = parse_requests([question("Peru", response_format={"type": "json_object"}), question("Peru")], None)
    constrained, free = onnx_engine.generate(requests)
    assert constrained.text.startswith('{"') and free.text == "The capital of Peru is Lima."


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "nonsense"}, "Invalid type"),
        ({"type": "string", "pattern": "(("}, "regex parse error"),
        ({"$ref": "#/definitions/missing"}, "does not exist"),
    ],
)
def test_a_schema_the_runtime_cannot_compile_is_refused_naming_response_format(onnx_engine, schema, reason):
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}
    requests = parse_requests([question("Spain"), question("Peru", response_format=bad)], None)
    with pytest.raises(BadRequestError) as raised:
        onnx_engine.generate(requests)
    error = raised.value
    assert (error.param, error.code) == ("response_format", "invalid_json_schema")
    assert str(error).startswith("row 1: 'response_format'") and reason in str(error)


# Through the logged pyfunc model, as `mlflow models serve` and Spark call it.


def test_pyfunc_takes_response_format_per_row_and_as_a_param(onnx_pyfunc):
    frame = pd.DataFrame([question("Spain", response_format=CITY_FORMAT), question("Peru")])
    constrained, free = onnx_pyfunc.predict(frame)
    valid(constrained["choices"][0]["message"]["content"])
    assert free["choices"][0]["message"]["content"] == "The capital of Peru is Lima."
    outs = onnx_pyfunc.predict(
        pd.DataFrame([question("Kenya"), question("Japan")]), params={"response_format": CITY_FORMAT}
    )
    for out in outs:
        valid(out["choices"][0]["message"]["content"])
    [text_row] = onnx_pyfunc.predict([question("Peru", response_format=json.dumps(CITY_FORMAT))])  # JSON text too
    valid(text_row["choices"][0]["message"]["content"])


def test_pyfunc_streams_a_schema_answer(onnx_pyfunc):
    chunks = list(onnx_pyfunc.predict_stream(question("Japan", response_format=CITY_FORMAT)))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    valid("".join(c["choices"][0]["delta"].get("content", "") for c in chunks))


def test_pyfunc_refuses_a_bad_schema_as_an_invalid_parameter(onnx_pyfunc):
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}}
    with pytest.raises(MlflowException, match="'response_format'") as raised:
        onnx_pyfunc.predict(question("Spain", response_format=bad))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_batch_scoring_lines_ask_for_json_beside_free_ones(onnx_pyfunc):
    """The JSON request lines a Spark executor scores (`slmflow.batch.row_model`), through the logged model."""
    lines = [json.dumps(question("Spain", response_format=CITY_FORMAT)), json.dumps(question("Kenya"))]
    constrained, free = score_requests(onnx_pyfunc.predict, lines)
    valid(constrained["answer"])
    assert free["answer"] == "The capital of Kenya is Nairobi."
