import pytest

from slmflow.chat.response import answer_text, chat_completion, chat_completion_chunk, single_prediction


def test_completion_shape_and_answer_text():
    completion = chat_completion("Madrid.", "stop", 10, 3, "m")
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Madrid."}
    assert completion["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    assert answer_text(completion) == answer_text([completion]) == answer_text("Madrid.") == "Madrid."


def test_chunk_shape():
    chunk = chat_completion_chunk("chatcmpl-1", {"content": "Ma"}, None, "m")
    assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == "chatcmpl-1"
    assert chunk["choices"] == [{"index": 0, "delta": {"content": "Ma"}, "finish_reason": None}]


def test_single_prediction_unwraps_a_list_of_one_only():
    assert single_prediction(["a"]) == single_prediction("a") == "a"
    with pytest.raises(ValueError, match="expected one prediction, got 2"):
        single_prediction(["a", "b"])
