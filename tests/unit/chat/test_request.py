"""The typed request model, without a model: parsing, defaults, limits and the errors that name a field."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from slmflow.chat.request import QUOTE_CHARS, UNSUPPORTED_FIELDS, parse_chat_completion, parse_requests
from slmflow.config import GenerationConfig
from slmflow.errors import BadRequestError
from slmflow.policy import SAMPLING_FIELDS, RequestLimits, SamplingSettings

DEFAULTS = SamplingSettings(max_tokens=16)
USER = [{"role": "user", "content": "What is the capital of Spain?"}]


def refusal(body, params=None, limits=None) -> BadRequestError:
    with pytest.raises(BadRequestError) as raised:
        parse_requests(body, params, DEFAULTS, limits)
    return raised.value


def test_dict_dataframe_and_list_inputs_give_the_same_rows():
    from_dict = parse_requests({"messages": USER}, None, DEFAULTS)
    from_frame = parse_requests(pd.DataFrame({"messages": [USER]}), None, DEFAULTS)
    from_list = parse_requests([{"messages": USER}], None, DEFAULTS)
    assert from_dict == from_frame == from_list
    assert from_dict[0].messages == tuple(USER)


def test_prompt_rows_and_plain_strings():
    rows = parse_requests(pd.DataFrame({"prompt": ["<|user|>\nhi<|end|>\n<|assistant|>\n", "x"]}), None, DEFAULTS)
    assert [r.prompt for r in rows] == ["<|user|>\nhi<|end|>\n<|assistant|>\n", "x"]
    assert parse_requests("hello", None, DEFAULTS)[0].prompt == "hello"


def test_params_then_row_fields_override_defaults():
    rows = parse_requests(
        pd.DataFrame({"messages": [USER, USER], "temperature": [0.5, None], "max_tokens": [None, 7]}),
        {"max_tokens": 5, "temperature": 0.2},
        DEFAULTS,
    )
    assert [(r.settings.max_tokens, r.settings.temperature) for r in rows] == [(5, 0.5), (7, 0.2)]
    assert rows[0].settings.max_tokens_explicit
    assert not parse_requests({"messages": USER}, None, DEFAULTS)[0].settings.max_tokens_explicit


def test_stop_is_a_string_or_a_list_in_rows_and_in_params():
    """Defect 5: a single stop string was refused, and stop in params was dropped."""
    assert parse_requests({"messages": USER, "stop": "."}, None, DEFAULTS)[0].settings.stop == (".",)
    assert parse_requests({"messages": USER, "stop": ["a", "b"]}, None, DEFAULTS)[0].settings.stop == ("a", "b")
    assert parse_requests({"messages": USER}, {"stop": ["x"]}, DEFAULTS)[0].settings.stop == ("x",)
    assert parse_requests({"messages": USER}, {"stop": "y"}, DEFAULTS)[0].settings.stop == ("y",)


def test_max_completion_tokens_is_max_tokens():
    [row] = parse_requests({"messages": USER, "max_completion_tokens": 9}, None, DEFAULTS)
    assert row.settings.max_tokens == 9 and row.settings.max_tokens_explicit


def test_content_may_be_a_list_of_text_parts_even_as_arrays_from_spark():
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of Spain?"}]
    [row] = parse_requests({"messages": [{"role": "user", "content": parts}]}, None, DEFAULTS)
    assert row.messages == tuple(USER)
    arrays = pd.DataFrame({"messages": [np.array([{"role": "user", "content": np.array(parts)}])]})
    assert parse_requests(arrays, None, DEFAULTS)[0].messages == tuple(USER)


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"messages": []}, "messages", "'messages' is empty"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "unknown role 'robot'"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", r"messages\[0\].content: missing"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content", "must be a string, got int"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content", "text parts"),
        ({"messages": "hi"}, "messages", "must be a list of messages"),
        ({"messages": ["hi"]}, "messages[0]", "must be an object"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "last message must not be the assistant"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": USER, "max_tokens": 2.5}, "max_tokens", "must be an integer"),
        ({"messages": USER, "max_tokens": "ten"}, "max_tokens", "must be an integer"),
        ({"messages": USER, "max_tokens": True}, "max_tokens", "not a boolean"),
        ({"messages": USER, "temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"messages": USER, "temperature": "hot"}, "temperature", "must be a number"),
        ({"messages": USER, "temperature": float("inf")}, "temperature", "finite"),
        ({"messages": USER, "top_p": 0}, "top_p", "greater than 0"),
        ({"messages": USER, "top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"messages": USER, "top_k": 0}, "top_k", "greater than or equal to 1"),
        ({"messages": USER, "stop": [""]}, "stop", "non-empty string"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"messages": USER, "prompt": "x"}, "messages", "exactly one of 'messages' or 'prompt'"),
        ({"content": "hi"}, "messages", "exactly one of 'messages' or 'prompt'"),
        ({"prompt": ""}, "prompt", "'prompt' must be a non-empty string"),
    ],
)
def test_bad_requests_name_the_field(body, param, message):
    error = refusal(body)
    assert error.param == param
    assert re.search(message, str(error)), str(error)


def test_a_nul_or_control_character_is_refused_not_cut():
    """Defect 1: a NUL silently dropped the rest of the conversation."""
    body = {"messages": [{"role": "system", "content": "Be brief.\u0000"}, *USER]}
    error = refusal(body)
    assert error.param == "messages[0].content" and "U+0000" in str(error)
    assert refusal({"prompt": "a\x1bb"}).param == "prompt"
    assert refusal({"messages": USER, "stop": ["\x00"]}).param == "stop"
    assert refusal({"messages": [{"role": "user", "content": "\ud800"}]}).param == "messages[0].content"
    [row] = parse_requests({"messages": [{"role": "user", "content": "tab\tnew\nline\r"}]}, None, DEFAULTS)
    assert row.messages[0]["content"] == "tab\tnew\nline\r"


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", 2**31), ("seed", -1), ("min_tokens", 2**31), ("top_k", 2**31), ("max_tokens", 2**31)],
)
def test_values_beyond_the_runtime_int32_are_refused(field, value):
    """Defect 3: these reached the runtime and came back as a stack trace."""
    assert refusal({"messages": USER, field: value}).param == field


def test_min_tokens_may_not_exceed_max_tokens():
    error = refusal({"messages": USER, "max_tokens": 5, "min_tokens": 6})
    assert error.param == "min_tokens" and "min_tokens (6) must not exceed max_tokens (5)" in str(error)
    assert refusal({"messages": USER, "min_tokens": 17}).param == "min_tokens"  # beyond the default of 16


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 2),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("logprobs", True),
        ("stream", True),
        ("presence_penalty", 0.5),
    ],
)
def test_unsupported_openai_fields_are_refused_in_rows_and_params(field, value):
    """Defect 5: these were silently ignored."""
    assert "not supported" in str(refusal({"messages": USER, field: value}))
    assert refusal({"messages": USER}, params={field: value}).param == field


def test_unsupported_fields_with_their_default_values_pass():
    defaults = {"n": 1, "stream": False, "logprobs": False, "tools": [], "response_format": {"type": "text"}}
    body = {"messages": USER, **defaults}
    assert parse_requests(body, None, DEFAULTS)[0].messages == tuple(USER)
    frame = pd.DataFrame({"messages": [USER, USER], "n": [1.0, None]})  # a column with a gap holds floats
    assert len(parse_requests(frame, None, DEFAULTS)) == 2


def test_error_messages_quote_little_of_the_input():
    """Defect 8: the whole input was echoed back."""
    huge = "x" * 1_000_000
    bodies = ({"messages": USER, "top_p": huge}, {"messages": [{"role": huge, "content": "hi"}]}, {"prompt": [huge]})
    for body in bodies:
        assert len(str(refusal(body))) < QUOTE_CHARS + 200


def test_rows_and_characters_per_request_are_capped():
    limits = RequestLimits(max_rows=3, max_request_chars=100)
    assert "4 rows, more than the limit of 3" in str(refusal([{"messages": USER}] * 4, limits=limits))
    assert refusal({"messages": [{"role": "user", "content": "x" * 101}]}, limits=limits).param == "messages"
    assert len(parse_requests([{"messages": USER}] * 3, None, DEFAULTS, limits)) == 3


def test_empty_batch_and_odd_inputs():
    assert "no rows" in str(refusal([]))
    assert "expected an object" in str(refusal([42]))
    assert "unsupported input type" in str(refusal(42))


def test_bad_params_are_named_as_params():
    error = refusal({"messages": USER}, params={"top_p": 2.0})
    assert error.param == "top_p" and str(error).startswith("params: 'top_p'")


def test_batch_key_ignores_sampling_knobs_when_greedy():
    assert SamplingSettings(top_k=3, seed=4).batch_key() == SamplingSettings().batch_key()
    assert SamplingSettings(temperature=0.5, seed=1).batch_key() != SamplingSettings(temperature=0.5).batch_key()
    assert SamplingSettings(min_tokens=2).batch_key() != SamplingSettings().batch_key()


def test_the_config_takes_its_bounds_and_defaults_from_the_request_model():
    assert GenerationConfig().max_new_tokens == SamplingSettings().max_tokens
    for bad in ({"seed": 2**31}, {"top_p": 0}, {"temperature": -1}, {"limits": {"max_rows": 0}}):
        with pytest.raises(ValidationError):
            GenerationConfig(**bad)


# The OpenAI chat completions body, as the OpenAI-compatible server parses it.


def test_chat_completion_body_with_stream_and_usage():
    parsed = parse_chat_completion(
        {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}, "stop": "."},
        DEFAULTS,
    )
    assert parsed.stream and parsed.include_usage and parsed.model == "m"
    assert parsed.request.settings.stop == (".",) and parsed.request.messages == tuple(USER)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({}, "messages"),
        ({"messages": USER, "n": 3}, "n"),
        ({"messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"messages": USER, "colour": "red"}, "colour"),
        ({"messages": USER, "seed": 2**40}, "seed"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, "messages"),
    ],
)
def test_bad_chat_completion_bodies_name_the_field(body, param):
    with pytest.raises(BadRequestError) as raised:
        parse_chat_completion(body, DEFAULTS, RequestLimits(max_request_chars=100))
    assert raised.value.param == param


# Any JSON value in any field: a valid request or a refusal naming a field, never another exception.

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FIELDS = ["messages", "prompt", *SAMPLING_FIELDS, *UNSUPPORTED_FIELDS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4), good=st.booleans())
def test_any_json_in_any_field_is_parsed_or_refused_naming_a_field(body, good):
    if good:
        body = {"messages": USER, **{k: v for k, v in body.items() if k != "prompt"}}
    try:
        rows = parse_requests(json.loads(json.dumps(body)), None, DEFAULTS)
    except BadRequestError as error:
        assert error.param or "messages" in str(error) or "prompt" in str(error), str(error)
        assert "Traceback" not in str(error)
        assert len(str(error)) < QUOTE_CHARS + 200
    else:
        assert len(rows) == 1 and (rows[0].messages or rows[0].prompt)


# Structured outputs: `response_format` for models with constrained decoding.

CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "capital", "schema": CITY_SCHEMA, "strict": True}}


def test_response_format_is_carried_in_the_settings_from_rows_params_and_spark_arrays():
    [json_row, text_row, spark_row] = parse_requests(
        [
            {"messages": USER, "response_format": {"type": "json_object"}},
            {"messages": USER, "response_format": {"type": "text"}},  # a row's own value wins over params
            {"messages": USER},
        ],
        {"response_format": JSON_SCHEMA_FORMAT},
        DEFAULTS,
    )
    assert json.loads(json_row.settings.response_format.json_schema) == {"type": "object"}
    assert text_row.settings.response_format is None
    assert json.loads(spark_row.settings.response_format.json_schema) == CITY_SCHEMA
    arrays = {
        **JSON_SCHEMA_FORMAT,
        "json_schema": {"name": "capital", "schema": {**CITY_SCHEMA, "required": np.array(["city"])}},
    }
    [from_spark] = parse_requests(pd.DataFrame({"messages": [USER], "response_format": [arrays]}), None, DEFAULTS)
    assert from_spark.settings.response_format == spark_row.settings.response_format
    [as_text] = parse_requests({"messages": USER, "response_format": json.dumps(JSON_SCHEMA_FORMAT)}, None)
    assert as_text.settings.response_format == spark_row.settings.response_format  # a column of JSON text


def test_constrained_and_free_rows_never_share_a_batch_key():
    free = SamplingSettings()
    constrained = parse_requests({"messages": USER, "response_format": JSON_SCHEMA_FORMAT}, None)[0].settings
    other = parse_requests({"messages": USER, "response_format": {"type": "json_object"}}, None)[0].settings
    assert len({free.batch_key(), constrained.batch_key(), other.batch_key()}) == 3
    hot = {"temperature": 0.5}
    assert SamplingSettings(**hot).batch_key() != constrained.model_copy(update=hot).batch_key()


def test_the_compact_json_option_is_added_unless_the_schema_sets_its_own():
    [row] = parse_requests({"messages": USER, "response_format": JSON_SCHEMA_FORMAT}, None)
    kind, data = row.settings.response_format.guidance()
    assert kind == "json_schema" and json.loads(data) == {**CITY_SCHEMA, "x-guidance": {"whitespace_flexible": False}}
    own = {**CITY_SCHEMA, "x-guidance": {"whitespace_flexible": True}}
    body = {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": own}}}
    assert json.loads(parse_requests(body, None)[0].settings.response_format.guidance()[1]) == own


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"type": "xml"}, "'type' is one of text, json_object, json_schema"),
        ([{"type": "json_object"}], "must be an object"),
        ({"type": "json_object", "schema": {}}, "unknown field 'schema'"),
        ({"type": "json_schema"}, "'json_schema' must be an object"),
        ({"type": "json_schema", "json_schema": {"name": "c", "schema": {}, "format": 1}}, "must be an object"),
        ({"type": "json_schema", "json_schema": {"schema": CITY_SCHEMA}}, "'json_schema.name'"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": CITY_SCHEMA}}, "'json_schema.name'"),
        ({"type": "json_schema", "json_schema": {"name": "c", "schema": [1]}}, "'json_schema.schema' must be"),
        ({"type": "json_schema", "json_schema": {"name": "c", "schema": {}, "strict": "yes"}}, "'json_schema.strict'"),
    ],
)
def test_a_bad_response_format_names_the_field(response_format, message):
    error = refusal({"messages": USER, "response_format": response_format})
    assert error.param == "response_format" and message in str(error), str(error)
    assert refusal({"messages": USER}, params={"response_format": response_format}).param == "response_format"


def test_min_tokens_cannot_hold_back_the_end_of_a_schema():
    error = refusal({"messages": USER, "response_format": {"type": "json_object"}, "min_tokens": 2})
    assert error.param == "min_tokens" and "response_format" in str(error)


def test_the_server_refuses_response_format_unless_the_model_has_constrained_decoding():
    body = {"messages": USER, "response_format": JSON_SCHEMA_FORMAT}
    with pytest.raises(BadRequestError, match="'response_format' is not supported") as raised:
        parse_chat_completion(body)  # a transformers-chat model: no constrained decoding
    assert (raised.value.param, raised.value.code) == ("response_format", "unsupported_parameter")
    parsed = parse_chat_completion(body, structured_outputs=True)
    assert json.loads(parsed.request.settings.response_format.json_schema) == CITY_SCHEMA
    assert parse_chat_completion({**body, "response_format": {"type": "text"}}).request.settings.response_format is None
    with pytest.raises(BadRequestError) as raised:
        parse_chat_completion({**body, "response_format": {"type": "json"}}, structured_outputs=True)
    assert raised.value.param == "response_format"


def test_the_message_count_is_bounded_before_any_message_is_read():
    many = [{"role": "user", "content": ""}] * 5 + [{"role": "pirate"}]  # the bad one is never reached
    for parse in (
        lambda: parse_chat_completion({"messages": many}, DEFAULTS, RequestLimits(max_messages=4)),
        lambda: parse_requests({"messages": many}, None, DEFAULTS, RequestLimits(max_messages=4)),
    ):
        with pytest.raises(BadRequestError) as refused:
            parse()
        assert (refused.value.param, refused.value.code) == ("messages", "too_many_messages")


# Limits on their boundaries: exactly at a limit passes, one past it is refused.


def test_exactly_max_request_chars_passes_and_one_more_is_refused():
    limits = RequestLimits(max_request_chars=100)
    two_rows = [{"messages": [{"role": "user", "content": "x" * 60}]}, {"prompt": "y" * 40}]
    assert len(parse_requests(two_rows, None, DEFAULTS, limits)) == 2
    two_rows[1]["prompt"] += "y"
    error = refusal(two_rows, limits=limits)
    assert error.code == "request_too_large" and "101 characters, more than the limit of 100" in str(error)
    body = {"messages": [{"role": "system", "content": "s" * 50}, {"role": "user", "content": "u" * 50}]}
    assert parse_chat_completion(body, DEFAULTS, limits).request.text_length() == 100
    body["messages"][1]["content"] += "u"
    with pytest.raises(BadRequestError, match="101 characters"):
        parse_chat_completion(body, DEFAULTS, limits)


def test_exactly_max_rows_passes_and_one_more_is_refused():
    limits = RequestLimits(max_rows=2)
    assert len(parse_requests([{"messages": USER}] * 2, None, DEFAULTS, limits)) == 2
    error = refusal([{"messages": USER}] * 3, limits=limits)
    assert error.code == "too_many_rows" and "3 rows, more than the limit of 2" in str(error)


def test_four_stop_strings_pass_and_five_are_refused():
    four = ["a", "b", "c", "d"]
    assert parse_requests({"messages": USER, "stop": four}, None, DEFAULTS)[0].settings.stop == tuple(four)
    assert "takes at most 4 strings, got 5" in str(refusal({"messages": USER, "stop": [*four, "e"]}))


def test_a_stop_string_of_256_characters_passes_and_257_are_refused():
    assert parse_requests({"messages": USER, "stop": "s" * 256}, None, DEFAULTS)[0].settings.stop == ("s" * 256,)
    assert "at most 256 characters" in str(refusal({"messages": USER, "stop": ["s", "s" * 257]}))


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [("max_tokens", 1, 2**31 - 1), ("temperature", 0.0, 2.0), ("top_p", 2**-20, 1.0), ("top_k", 1, 2**31 - 1)],
)
def test_sampling_bounds_are_inclusive_where_documented(field, low, high):
    for value in (low, high):
        assert getattr(parse_requests({"messages": USER, field: value}, None, DEFAULTS)[0].settings, field) == value
    assert refusal({"messages": USER, "temperature": 2.0 + 2**-20}).param == "temperature"
    assert refusal({"messages": USER, "top_p": 0.0}).param == "top_p"


def test_seed_and_min_tokens_bounds():
    [row] = parse_requests({"messages": USER, "seed": 0, "min_tokens": 16}, None, DEFAULTS)
    assert (row.settings.seed, row.settings.min_tokens) == (0, 16)
    assert parse_requests({"messages": USER, "seed": 2**31 - 1}, None, DEFAULTS)[0].settings.seed == 2**31 - 1


def test_numpy_and_dataframe_values_are_plain_values():
    frame = pd.DataFrame({"messages": [USER], "max_tokens": [np.int64(7)], "temperature": [np.float32(0.5)]})
    [row] = parse_requests(frame, {"top_k": np.int64(3), "stop": np.array(["x", "y"])}, DEFAULTS)
    assert (row.settings.max_tokens, row.settings.temperature, row.settings.top_k) == (7, 0.5, 3)
    assert row.settings.stop == ("x", "y")
    assert parse_requests({"messages": USER, "max_tokens": 8.0}, None, DEFAULTS)[0].settings.max_tokens == 8
    nan = parse_requests({"messages": USER, "max_tokens": float("nan")}, None, DEFAULTS)[0].settings  # read as missing
    assert nan.max_tokens == 16 and not nan.max_tokens_explicit


def test_text_length_counts_every_message_or_the_prompt():
    [chat] = parse_requests({"messages": [{"role": "system", "content": "abc"}, *USER]}, None, DEFAULTS)
    assert chat.text_length() == 3 + len(USER[0]["content"]) and chat.is_chat
    [raw] = parse_requests({"prompt": "hello"}, None, DEFAULTS)
    assert raw.text_length() == 5 and not raw.is_chat


def test_tool_calls_in_a_message_are_refused_and_empty_ones_pass():
    message = {"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}
    assert refusal({"messages": [message, *USER]}).param == "messages[0].tool_calls"
    assert len(parse_requests({"messages": [{**message, "tool_calls": []}, *USER]}, None, DEFAULTS)) == 1


def test_quotes_are_cut_to_quote_chars():
    from slmflow.chat.request import quote

    assert quote("abc") == "'abc'"
    assert len(quote(["x" * 10] * 100)) <= QUOTE_CHARS + 3


def test_stream_options_must_be_the_include_usage_object():
    for options in ({"include_usage": True, "other": 1}, "yes"):
        with pytest.raises(BadRequestError) as raised:
            parse_chat_completion({"messages": USER, "stream_options": options}, DEFAULTS)
        assert raised.value.param == "stream_options"
    assert not parse_chat_completion({"messages": USER, "stream_options": {}}, DEFAULTS).include_usage
    assert not parse_chat_completion({"messages": USER}, DEFAULTS).stream
    with pytest.raises(BadRequestError, match="'model' must be a string"):
        parse_chat_completion({"messages": USER, "model": 3}, DEFAULTS)


NON_DEFAULT = {
    "n": 2,
    "tools": [{"type": "function"}],
    "tool_choice": "required",
    "functions": [{"name": "f"}],
    "function_call": "auto",
    "response_format": {"type": "json_object"},
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"1": 5},
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "stream": True,
}


# The pyfunc model decodes under constraints, so it takes response_format (its refusals are tested above).
@pytest.mark.parametrize("field", sorted(set(UNSUPPORTED_FIELDS) - {"response_format"}))
def test_every_unsupported_field_is_refused_naming_it_and_its_defaults_pass(field):
    error = refusal({"messages": USER, field: NON_DEFAULT[field]})
    assert (error.param, error.code) == (field, "unsupported_parameter")
    assert str(error).startswith(f"row 0: '{field}' is not supported by this model (got ")
    for default in UNSUPPORTED_FIELDS[field]:
        assert len(parse_requests({"messages": USER, field: default}, {field: default}, DEFAULTS)) == 1
    assert refusal({"messages": USER}, params={field: NON_DEFAULT[field]}).param == field
    assert len(parse_requests({"messages": USER, field: None}, None, DEFAULTS)) == 1  # missing, not a value


def test_a_boolean_is_not_the_integer_default():
    assert refusal({"messages": USER, "n": True}).param == "n"
    assert refusal({"messages": USER, "presence_penalty": False}).param == "presence_penalty"


def test_the_chat_completion_body_ignores_only_the_documented_fields_and_streams_only_there():
    from slmflow.chat.request import IGNORED_FIELDS

    body = {"messages": USER, **dict.fromkeys(IGNORED_FIELDS, "x"), "model": "m"}
    assert parse_chat_completion(body, DEFAULTS).request.messages == tuple(USER)
    assert parse_chat_completion({"messages": USER, "stream": True}, DEFAULTS).stream
    with pytest.raises(BadRequestError) as raised:
        parse_chat_completion({"messages": USER, "n": 2}, DEFAULTS)
    assert str(raised.value) == "'n' is not supported by this model (got 2)"
    with pytest.raises(BadRequestError) as raised:
        parse_chat_completion({"model": "m"}, DEFAULTS)
    assert (str(raised.value), raised.value.param) == ("'messages' is required", "messages")
    with pytest.raises(BadRequestError) as raised:
        parse_chat_completion({"messages": USER, "extra": 1, "another": 2}, DEFAULTS)
    assert (str(raised.value), raised.value.param) == ("unknown field 'another'", "another")


def test_exact_refusals_for_rows_and_messages():
    assert str(refusal([])) == "the request holds no rows"
    assert str(refusal({"messages": []})) == "row 0: 'messages' is empty"
    assert str(refusal({"messages": [{"role": "robot", "content": "x"}]})) == (
        "row 0: messages[0]: unknown role 'robot' (expected one of system, user, assistant)"
    )
    tool = {"role": "assistant", "content": "x", "function_call": {"name": "f"}}
    assert (
        str(refusal({"messages": [tool, *USER]})) == "row 0: messages[0].function_call is not supported by this model"
    )
    assert str(refusal({"messages": [{"role": "assistant", "content": "x"}]})) == (
        "row 0: the last message must not be the assistant's"
    )
    for role in ("system", "user"):
        [row] = parse_requests({"messages": [{"role": role, "content": "x"}]}, None, DEFAULTS)
        assert row.messages == ({"role": role, "content": "x"},)
    assistant_then_user = [{"role": "assistant", "content": "a"}, *USER]
    assert parse_requests({"messages": assistant_then_user}, None, DEFAULTS)[0].messages[0]["role"] == "assistant"
    assert str(refusal({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]})).startswith(
        "row 0: messages[0].content: only text parts are supported, got "
    )


def test_settings_errors_name_the_field_and_quote_the_input():
    assert str(refusal({"messages": USER, "top_p": 2.0})) == (
        "row 0: 'top_p': Input should be less than or equal to 1, got 2.0"
    )
    error = refusal({"messages": USER, "max_tokens": 3, "min_tokens": 4})
    assert (str(error), error.param) == ("row 0: min_tokens (4) must not exceed max_tokens (3)", "min_tokens")
    [row] = parse_requests({"messages": USER, "max_completion_tokens": 5, "max_tokens": 6}, None, DEFAULTS)
    assert row.settings.max_tokens == 6  # max_tokens wins over its newer name
    [row] = parse_requests({"messages": USER, "max_completion_tokens": float("nan")}, None, DEFAULTS)
    assert row.settings.max_tokens == 16 and not row.settings.max_tokens_explicit


def test_usage_is_streamed_only_when_asked_and_bad_stream_options_are_quoted():
    assert not parse_chat_completion({"messages": USER, "stream": True}, DEFAULTS).include_usage
    with_usage = {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    assert parse_chat_completion(with_usage, DEFAULTS).include_usage
    with pytest.raises(BadRequestError) as raised:
        parse_chat_completion({"messages": USER, "stream_options": {"x": 1}}, DEFAULTS)
    assert str(raised.value) == "'stream_options' must be {\"include_usage\": bool}, got {'x': 1}"
    with pytest.raises(BadRequestError) as raised:
        parse_chat_completion({"messages": USER, "stream_options": {"include_usage": "yes"}}, DEFAULTS)
    assert str(raised.value) == "'stream_options.include_usage' must be a boolean, got 'yes'"


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ([], "the request body must be a JSON object, got list", None),
        ({"messages": USER, "stream": "yes"}, "'stream' must be a boolean, got 'yes'", "stream"),
        ({"messages": USER, "model": 3}, "'model' must be a string, got 3", "model"),
        ({"messages": USER, "top_k": 0}, "'top_k': Input should be greater than or equal to 1, got 0", "top_k"),
        ({"messages": USER, "logprobs": True}, "'logprobs' is not supported by this model (got True)", "logprobs"),
    ],
)
def test_exact_chat_completion_refusals(body, message, param):
    with pytest.raises(BadRequestError) as raised:
        parse_chat_completion(body, DEFAULTS)
    assert (str(raised.value), raised.value.param) == (message, param)


def test_max_completion_tokens_is_a_known_chat_completion_field():
    parsed = parse_chat_completion({"messages": USER, "max_completion_tokens": 7}, DEFAULTS)
    assert parsed.request.settings.max_tokens == 7 and parsed.request.settings.max_tokens_explicit


def test_quote_keeps_a_representation_of_quote_chars_and_cuts_a_longer_one():
    from slmflow.chat.request import quote

    assert quote("x" * (QUOTE_CHARS - 2)) == repr("x" * (QUOTE_CHARS - 2))  # exactly QUOTE_CHARS characters
    wide = {"k" * 150: "v" * 150, "l" * 150: "w" * 150}
    assert len(repr(wide)) > QUOTE_CHARS
    quoted = quote(wide)
    assert len(quoted) == QUOTE_CHARS + 3 and quoted.startswith("{'kkk") and quoted.endswith("v...")


def test_exact_refusals_of_message_shapes():
    from slmflow.chat.request import parse_messages

    for bad, message in [
        ("hi", "'messages' must be a list of messages, got 'hi'"),
        ([42], "messages[0] must be an object with 'role' and 'content'"),
        ([{"role": "user", "content": 42}], "messages[0].content must be a string, got int 42"),
        (
            [{"role": "user", "content": [{"type": "image_url"}]}],
            "messages[0].content: only text parts are supported, got {'type': 'image_url'}",
        ),
    ]:
        with pytest.raises(BadRequestError) as raised:
            parse_messages(bad)
        assert str(raised.value) == message
    assert str(refusal([42])) == "row 0: expected an object, got int"
