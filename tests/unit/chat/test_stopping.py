"""Stop strings without a model: where an answer ends, and what a stream may show while it grows."""

import pytest

from slmflow.chat.stopping import first_stop, visible_prefix


def test_the_earliest_stop_wins_whatever_the_order_of_the_list():
    assert first_stop("one. two! three", ["!", "."]) == 3
    assert first_stop("one. two! three", ["!"]) == 8
    assert first_stop("abc", ["x", "y"]) is None
    assert first_stop("abc", []) is None
    assert first_stop("stop at start", ["stop"]) == 0


@pytest.mark.parametrize(
    ("text", "stops", "finished", "visible"),
    [
        ("The capital is Lima.", ["."], False, "The capital is Lima"),  # cut at the stop, finished or not
        ("The capital is Lima.", ["."], True, "The capital is Lima"),
        ("The capital is", [], False, "The capital is"),  # nothing to hold back without stops
        ("The capital<", ["<|end|>"], False, "The ca"),  # the last 6 characters may still start "<|end|>"
        ("The capital<", ["<|end|>"], True, "The capital<"),  # finished: nothing is held back
        ("abcdef", ["xyz", "q"], False, "abcd"),  # held back by the longest stop, less one character
        ("ab", ["xyz"], False, ""),
        ("", ["xyz"], False, ""),
    ],
)
def test_visible_prefix(text, stops, finished, visible):
    assert visible_prefix(text, stops, finished) == visible


def test_a_stop_string_that_occurs_twice_ends_the_answer_at_its_first_occurrence():
    assert first_stop("a.b.c", ["."]) == 1
    assert visible_prefix("a.b.c", ["."], finished=True) == "a"
