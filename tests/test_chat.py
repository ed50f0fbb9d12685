import pandas as pd
import pytest

from slmflow.chat import BadRequestError, SamplingSettings, answer_text, chat_completion, parse_requests

DEFAULTS = SamplingSettings(max_tokens=16)
USER = [{"role": "user", "content": "What is the capital of Spain?"}]


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
        pd.DataFrame({"messages": [USER, USER], "temperature": [0.5, None]}),
        {"max_tokens": 5, "temperature": 0.2},
        DEFAULTS,
    )
    assert [(r.settings.max_tokens, r.settings.temperature) for r in rows] == [(5, 0.5), (5, 0.2)]
    assert rows[0].settings.max_tokens_explicit
    assert not parse_requests({"messages": USER}, None, DEFAULTS)[0].settings.max_tokens_explicit


def test_stop_accepts_a_string_or_a_list():
    assert parse_requests({"messages": USER, "stop": "."}, None, DEFAULTS)[0].settings.stop == (".",)
    assert parse_requests({"messages": USER, "stop": ["a", "b"]}, None, DEFAULTS)[0].settings.stop == ("a", "b")


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"messages": []}, "'messages' is empty"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "unknown role 'robot'"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\]: missing 'content'"),
        ({"messages": [{"role": "user", "content": 42}]}, "'content' must be a string, got int"),
        ({"messages": "hi"}, "must be a list of messages"),
        ({"messages": ["hi"]}, "must be an object"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "last message must not be the assistant"),
        ({"messages": USER, "max_tokens": 0}, "'max_tokens' must be > 0"),
        ({"messages": USER, "max_tokens": -3}, "'max_tokens' must be > 0"),
        ({"messages": USER, "max_tokens": 2.5}, "'max_tokens' must be an integer"),
        ({"messages": USER, "max_tokens": "ten"}, "'max_tokens' must be an integer"),
        ({"messages": USER, "temperature": -0.1}, "'temperature' must be >= 0"),
        ({"messages": USER, "temperature": "hot"}, "'temperature' must be a number"),
        ({"messages": USER, "top_p": 0}, r"'top_p' must be in \(0, 1\]"),
        ({"messages": USER, "top_p": 1.5}, r"'top_p' must be in \(0, 1\]"),
        ({"messages": USER, "top_k": 0}, "'top_k' must be >= 1"),
        ({"messages": USER, "stop": [""]}, "'stop' must be a non-empty string"),
        ({"messages": USER, "prompt": "x"}, "exactly one of 'messages' or 'prompt'"),
        ({"content": "hi"}, "exactly one of 'messages' or 'prompt'"),
        ({"prompt": ""}, "'prompt' must be a non-empty string"),
    ],
)
def test_bad_requests_name_the_field(request_body, message):
    with pytest.raises(BadRequestError, match=message):
        parse_requests(request_body, None, DEFAULTS)


def test_bad_params_are_named_as_params():
    with pytest.raises(BadRequestError, match="params: 'top_p'"):
        parse_requests({"messages": USER}, {"top_p": 2.0}, DEFAULTS)


def test_empty_batch():
    with pytest.raises(BadRequestError, match="no rows"):
        parse_requests([], None, DEFAULTS)


def test_completion_shape_and_answer_text():
    completion = chat_completion("Madrid.", "stop", 10, 3, "m")
    assert completion["object"] == "chat.completion"
    assert completion["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    assert answer_text(completion) == answer_text([completion]) == answer_text("Madrid.") == "Madrid."
