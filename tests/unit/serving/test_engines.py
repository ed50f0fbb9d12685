"""Loading a served model of either flavor behind the batcher's step-wise engine API."""

from __future__ import annotations

import pytest

from slmflow.chat.onnx.engine import OnnxChatEngine
from slmflow.chat.request import ChatRequest
from slmflow.errors import BadRequestError
from slmflow.policy import RequestLimits, SamplingSettings
from slmflow.serving.engines import load_served_model, served_name

SPAIN = ({"role": "user", "content": "What is the capital of Spain?"},)


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("models:/tiny-phi3-chat@champion", "tiny-phi3-chat"),
        ("models:/tiny-phi3-chat/3", "tiny-phi3-chat"),
        ("models:/m-0123456789abcdef", "onnx-chat"),  # a logged model's id names no registered model
        ("runs:/abc/onnx-chat", "onnx-chat"),
    ],
)
def test_the_served_name_is_the_registered_model(uri, name):
    assert served_name(uri, "onnx-chat") == name


def test_an_onnx_chat_model_serves_its_own_engine_token_by_token(logged_models):
    served = load_served_model(logged_models["onnx-chat"])
    assert served.flavor == "onnx-chat" and served.streams_tokens
    assert isinstance(served.engine, OnnxChatEngine) and served.context_length == 512


def test_a_transformers_chat_model_answers_whole_through_predict(logged_models):
    served = load_served_model(logged_models["transformers-chat"])
    assert served.flavor == "transformers-chat" and not served.streams_tokens
    engine = served.engine
    row = engine.prepare(ChatRequest(messages=SPAIN, settings=SamplingSettings(max_tokens=32, stop=("Madrid",))))
    steps = list(engine.decode([row]))
    completion = engine.completion(row)
    assert len(steps) == 1 and row.visible_text == ""  # nothing streams before the whole answer
    assert completion.text == "The capital of Spain is " and completion.finish_reason == "stop"
    assert completion.prompt_tokens > 5 and completion.completion_tokens > 0
    too_long = SamplingSettings(max_tokens=100_000, max_tokens_explicit=True)
    with pytest.raises(BadRequestError) as refused:
        engine.prepare(ChatRequest(messages=SPAIN, settings=too_long))
    assert refused.value.param == "max_tokens"


# Issue 18: the serving policy is the logged model's, whatever its flavor.

POLICY_LIMITS = RequestLimits(max_rows=2, max_messages=8, max_total_tokens=300, timeout_seconds=7.0)


@pytest.fixture(scope="module")
def policy_models(tiny_onnx, tiny_checkpoint, tiny_config) -> dict[str, str]:
    import mlflow

    from slmflow.flavors.onnx_chat import log_onnx_chat_model
    from slmflow.flavors.transformers_chat import log_transformers_chat_model

    generation = tiny_config.generation.model_copy(update={"temperature": 1.3, "seed": 5, "limits": POLICY_LIMITS})
    with mlflow.start_run():
        return {
            "onnx-chat": log_onnx_chat_model(tiny_onnx, generation, tiny_config.runtime),
            "transformers-chat": log_transformers_chat_model(tiny_checkpoint, tiny_config.source, generation),
        }


@pytest.mark.parametrize("flavor", ["onnx-chat", "transformers-chat"])
def test_the_served_policy_is_the_one_the_logged_model_carries(policy_models, tiny_config, flavor):
    policy = load_served_model(policy_models[flavor]).policy
    assert policy.limits == POLICY_LIMITS
    defaults = policy.defaults
    assert (defaults.temperature, defaults.seed, defaults.max_tokens) == (1.3, 5, tiny_config.generation.max_new_tokens)
