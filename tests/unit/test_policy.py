"""The generation policy without a request: each typed field's conversion and bounds, batch keys, limits."""

import numpy as np
import pytest
from pydantic import ValidationError

from slmflow.policy import (
    DEFAULT_SETTINGS,
    INT32_MAX,
    RequestLimits,
    SamplingSettings,
    plain,
    refuse_control_characters,
)


def test_plain_turns_numpy_values_into_python_values_and_keeps_strings():
    assert plain(np.int64(3)) == 3 and type(plain(np.int64(3))) is int
    assert plain(np.array(["a", "b"])) == ["a", "b"]
    assert plain("text") == "text" and plain(b"raw") == b"raw" and plain(None) is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_tokens", True, "must be an integer, not a boolean"),
        ("max_tokens", 1.5, "must be an integer"),
        ("max_tokens", float("inf"), "must be an integer"),
        ("max_tokens", "3", "must be an integer"),
        ("temperature", False, "must be a number"),
        ("temperature", "0.5", "must be a number"),
        ("temperature", float("nan"), "must be a finite number"),
        ("stop", 5, "must be a non-empty string or a list of them"),
        ("stop", ["ok", 5], "must be a non-empty string or a list of them"),
        ("stop", ["a", "b", "c", "d", "e"], "takes at most 4 strings, got 5"),
    ],
)
def test_a_bad_value_names_what_is_wrong(field, value, message):
    with pytest.raises(ValidationError) as raised:
        SamplingSettings(**{field: value})
    assert raised.value.errors()[0]["msg"] == f"Value error, {message}"


def test_conversions_that_are_accepted():
    settings = SamplingSettings(max_tokens=8.0, temperature=1, top_k=np.int64(5), stop="x", seed=INT32_MAX)
    assert (settings.max_tokens, settings.temperature, settings.top_k, settings.stop) == (8, 1.0, 5, ("x",))
    assert type(settings.temperature) is float and settings.seed == INT32_MAX
    assert SamplingSettings(stop=("a", "b")).stop == ("a", "b")


def test_the_defaults():
    assert SamplingSettings(max_tokens=64, temperature=0.0, top_p=1.0, top_k=50, min_tokens=0) == DEFAULT_SETTINGS
    assert DEFAULT_SETTINGS.seed is None and DEFAULT_SETTINGS.stop == () and not DEFAULT_SETTINGS.max_tokens_explicit
    assert RequestLimits() == RequestLimits(
        max_rows=64, max_total_tokens=32768, max_request_chars=4_000_000, timeout_seconds=50.0
    )


def test_min_tokens_may_equal_max_tokens_but_not_exceed_it():
    assert SamplingSettings(max_tokens=4, min_tokens=4).min_tokens == 4
    with pytest.raises(ValidationError, match=r"min_tokens \(5\) must not exceed max_tokens \(4\)"):
        SamplingSettings(max_tokens=4, min_tokens=5)


def test_batch_keys_hold_exactly_what_rows_of_one_batch_must_share():
    # The last element is the response format (None: free text); constrained rows never share a batch.
    assert SamplingSettings(min_tokens=3, top_k=7, seed=1, stop=("x",), max_tokens=9).batch_key() == (0.0, 3, None)
    sampled = SamplingSettings(temperature=0.5, top_p=0.9, top_k=7, seed=1, min_tokens=2, stop=("x",))
    assert sampled.batch_key() == (0.5, 0.9, 7, 1, 2, None)


def test_control_characters_are_named_with_their_position():
    assert refuse_control_characters("tab\there\nand\r") == "tab\there\nand\r"
    with pytest.raises(ValueError) as raised:
        refuse_control_characters("ab\x7fc")
    assert str(raised.value) == "holds the control character U+007F at position 2, which the model cannot read"
    for character in ("\x00", "\x08", "\x0b", "\x0c", "\x0e", "\x1f", "\ud800", "\udfff"):
        with pytest.raises(ValueError):
            refuse_control_characters(character)
    for character in (" ", "\x20", "\x80", "\ue000", "é"):
        assert refuse_control_characters(character) == character


@pytest.mark.parametrize(
    "limits", [{"max_rows": 0}, {"max_total_tokens": 0}, {"max_request_chars": 0}, {"timeout_seconds": 0}]
)
def test_limits_must_be_positive(limits):
    with pytest.raises(ValidationError):
        RequestLimits(**limits)
    assert RequestLimits(**{name: 1 for name in limits}).model_dump()[next(iter(limits))] == 1
