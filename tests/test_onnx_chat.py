from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from slmflow.chat import ChatRequest, SamplingSettings
from slmflow.onnx_chat import OnnxChatEngine

QUESTIONS = {
    "Spain": "Madrid",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Japan": "Tokyo",
    "Norway": "Oslo",
}


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def chat(country: str, **settings) -> ChatRequest:
    return ChatRequest(
        settings=SamplingSettings(**{"max_tokens": 24, **settings}),
        messages=({"role": "user", "content": f"What is the capital of {country}?"},),
    )


def test_batch_answers_every_row_in_order(onnx_engine):
    countries = ["Spain", "Kenya", "Peru"]
    completions = onnx_engine.generate([chat(c) for c in countries])
    assert [c.text for c in completions] == [f"The capital of {c} is {QUESTIONS[c]}." for c in countries]
    assert all(c.finish_reason == "stop" for c in completions)


def test_greedy_batch_equals_rows_one_at_a_time(onnx_engine):
    requests = [chat(c) for c in QUESTIONS] + [chat("Spain", max_tokens=4)]
    batched = onnx_engine.generate(requests)
    single = [onnx_engine.generate([r])[0] for r in requests]
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in batched] == [
        (c.text, c.completion_tokens, c.finish_reason) for c in single
    ]


def test_max_tokens_bounds_the_completion_and_says_length(onnx_engine):
    done = onnx_engine.generate([chat("Spain", max_tokens=5)])[0]
    assert done.completion_tokens == 5
    assert done.finish_reason == "length"
    assert "The capital of Spain is Madrid.".startswith(done.text)


def test_usage_counts_equal_the_tokenizer_counts(onnx_engine):
    request = chat("Kenya")
    done = onnx_engine.generate([request])[0]
    prompt = onnx_engine.render(request.messages)
    assert done.prompt_tokens == len(onnx_engine.tokenizer.encode(prompt))
    assert done.completion_tokens == len(onnx_engine.tokenizer.encode(done.text))


def test_min_tokens_forces_the_length(onnx_engine):
    done = onnx_engine.generate([chat("Spain", max_tokens=40, min_tokens=40)])[0]
    assert done.completion_tokens == 40
    assert done.finish_reason == "length"


def test_same_seed_same_sample_and_sampling_is_on(onnx_engine):
    hot = {"temperature": 5.0, "top_k": 50, "top_p": 1.0, "max_tokens": 16}
    first = onnx_engine.generate([chat("Spain", seed=7, **hot)])[0].text
    again = onnx_engine.generate([chat("Spain", seed=7, **hot)])[0].text
    others = {onnx_engine.generate([chat("Spain", seed=s, **hot)])[0].text for s in range(8, 14)}
    assert first == again
    assert len(others | {first}) > 1  # temperature > 0 really samples


def test_stop_strings_cut_the_answer(onnx_engine):
    done = onnx_engine.generate([chat("Spain", stop=("is",))])[0]
    assert done.text == "The capital of Spain "
    assert done.finish_reason == "stop"


def test_stream_joins_to_the_non_streaming_answer(onnx_engine):
    pieces = list(onnx_engine.stream(chat("Norway")))
    text = "".join(piece for piece, final in pieces if final is None)
    final = pieces[-1][1]
    assert len(pieces) > 3
    assert text == final.text == onnx_engine.generate([chat("Norway")])[0].text


def test_prompt_beyond_the_context_is_rejected(onnx_engine):
    long = ChatRequest(settings=SamplingSettings(max_tokens=8), prompt="Spain " * 2000)
    with pytest.raises(ValueError, match="beyond the model's context of 512 tokens.*rejected, not truncated"):
        onnx_engine.generate([long])


def test_max_tokens_beyond_the_context_is_rejected(onnx_engine):
    with pytest.raises(ValueError, match="max_tokens=5000 is beyond the model's context"):
        onnx_engine.generate([chat("Spain", max_tokens=5000, max_tokens_explicit=True)])


def test_long_prompt_truncated_when_configured(tiny_onnx):
    engine = OnnxChatEngine(tiny_onnx, truncate_long_prompts=True)
    done = engine.generate([ChatRequest(settings=SamplingSettings(max_tokens=8), prompt="Spain " * 2000)])[0]
    assert done.prompt_tokens + 8 <= engine.context_length


def test_concurrent_requests_share_one_engine(onnx_engine):
    countries = list(QUESTIONS) * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda c: onnx_engine.generate([chat(c)])[0].text, countries))
    assert answers == [f"The capital of {c} is {QUESTIONS[c]}." for c in countries]


def test_thread_count_is_configurable(tiny_onnx):
    engine = OnnxChatEngine(tiny_onnx, intra_op_num_threads=1)
    assert engine.generate([chat("Peru")])[0].text == "The capital of Peru is Lima."


# Through the logged pyfunc model, as users call it.


def test_pyfunc_chat_request_returns_one_completion(onnx_pyfunc):
    out = onnx_pyfunc.predict({"messages": [{"role": "user", "content": "What is the capital of Spain?"}]})
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["content"] == "The capital of Spain is Madrid."
    assert out["choices"][0]["finish_reason"] == "stop"


def test_pyfunc_batch_and_params(onnx_pyfunc):
    frame = pd.DataFrame(
        {"messages": [[{"role": "user", "content": f"What is the capital of {c}?"}] for c in QUESTIONS]}
    )
    outs = onnx_pyfunc.predict(frame, params={"max_tokens": 6})
    assert len(outs) == len(QUESTIONS)
    assert all(o["usage"]["completion_tokens"] == 6 and o["choices"][0]["finish_reason"] == "length" for o in outs)


def test_pyfunc_request_fields_override_defaults(onnx_pyfunc):
    out = onnx_pyfunc.predict(
        {"messages": [{"role": "user", "content": "What is the capital of Spain?"}], "max_tokens": 3}
    )
    assert out["usage"]["completion_tokens"] == 3


def test_pyfunc_prompt_schema_returns_strings(onnx_pyfunc):
    prompts = [f"<|user|>\nWhat is the capital of {c}?<|end|>\n<|assistant|>\n" for c in ("Peru", "Japan")]
    assert onnx_pyfunc.predict(pd.DataFrame({"prompt": prompts})) == [
        "The capital of Peru is Lima.",
        "The capital of Japan is Tokyo.",
    ]


def test_pyfunc_stream_yields_openai_chunks(onnx_pyfunc):
    chunks = list(
        onnx_pyfunc.predict_stream({"messages": [{"role": "user", "content": "What is the capital of Japan?"}]})
    )
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "The capital of Japan is Tokyo."


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "empty"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "unknown role"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 3.0}, "top_p"),
        ({"prompt": "Spain " * 2000}, "context"),
    ],
)
def test_pyfunc_bad_input_is_an_invalid_parameter_error(onnx_pyfunc, body, message):
    with pytest.raises(MlflowException, match=message) as raised:
        onnx_pyfunc.predict(body)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_predict_stream_is_lazy():
    """Each chunk leaves as soon as its piece is decoded, not after the whole answer."""
    from slmflow.onnx_chat import Completion, OnnxChatModel

    pulled = []

    class StepEngine:
        def stream(self, request):
            for piece in ("The", " capital"):
                pulled.append(piece)
                yield piece, None
            yield "", Completion("The capital", "length", 3, 2)

    model = OnnxChatModel()
    model.engine, model.model_name = StepEngine(), "onnx-chat"
    model.defaults = SamplingSettings(max_tokens=2)
    chunks = model.predict_stream(None, {"messages": [user("hi")]})
    assert next(chunks)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert next(chunks)["choices"][0]["delta"] == {"content": "The"}
    assert pulled == ["The"]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == [" capital", None]


def test_rows_with_different_min_tokens_are_not_held_back_together(onnx_engine):
    short, forced = chat("Spain"), chat("Kenya", max_tokens=40, min_tokens=40)
    done = onnx_engine.generate([short, forced])
    assert done[0].text == "The capital of Spain is Madrid." and done[0].finish_reason == "stop"
    assert done[1].completion_tokens == 40


def test_a_batch_never_asks_for_more_than_the_context(onnx_engine):
    long_prompt = ChatRequest(settings=SamplingSettings(max_tokens=8), prompt="Spain " * 240)
    many_tokens = chat("Peru", max_tokens=400, max_tokens_explicit=True)
    done = onnx_engine.generate([long_prompt, many_tokens])
    assert done[0].prompt_tokens + done[0].completion_tokens <= onnx_engine.context_length
    assert done[1].text == "The capital of Peru is Lima."


def test_the_earliest_stop_string_wins_whatever_its_order_in_the_list():
    from slmflow.onnx_chat import _first_stop, _safe_prefix_length

    assert _first_stop("xaxb", ("b", "a")) == 1
    assert _safe_prefix_length("xaxb", ("b", "a")) == 1
    assert _first_stop("xyz", ("b",)) is None
    assert _safe_prefix_length("xyzab", ("abc",)) == 3  # "ab" may start "abc": held back
