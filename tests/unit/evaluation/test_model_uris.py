"""One reader of model URIs: candidates must be logged models; the champion may come as a registered version."""

from types import SimpleNamespace

import pytest

from slmflow.evaluation.model_uris import join_named_uris, logged_model_id, resolve_logged_model_id, split_named_uris

MODEL_ID = "m-0123456789abcdef0123456789abcdef"


class FakeRegistry:
    """An MlflowClient that knows one registered version, `chat/3`."""

    def __init__(self, model_id: str | None, source: str | None):
        self.version = SimpleNamespace(model_id=model_id, source=source)
        self.asked: list[tuple[str, str]] = []

    def get_model_version(self, name: str, version: str):
        self.asked.append((name, version))
        return self.version


def test_a_logged_model_uri_gives_its_id():
    assert logged_model_id(f"models:/{MODEL_ID}") == MODEL_ID


@pytest.mark.parametrize(
    "uri",
    [
        "runs:/abc/model",
        "models:/chat/3",
        "models:/chat@champion",
        f"models:/{MODEL_ID}/extra",
        "models:/m-",
        f"models:/ {MODEL_ID}",
        MODEL_ID,
        f"file:///models:/{MODEL_ID}",
        "",
    ],
)
def test_anything_but_a_logged_model_uri_is_refused(uri):
    with pytest.raises(ValueError, match="not a logged model URI"):
        logged_model_id(uri)


def test_a_logged_model_uri_resolves_without_the_registry():
    registry = FakeRegistry(None, None)
    assert resolve_logged_model_id(f"models:/{MODEL_ID}", registry) == MODEL_ID
    assert registry.asked == []


def test_a_registered_version_resolves_to_its_logged_model():
    registry = FakeRegistry(MODEL_ID, "runs:/abc/model")
    assert resolve_logged_model_id("models:/team/chat/3", registry) == MODEL_ID
    assert registry.asked == [("team/chat", "3")]


def test_a_registered_version_with_the_id_only_in_its_source_resolves_to_it():
    assert resolve_logged_model_id("models:/chat/3", FakeRegistry(None, f"models:/{MODEL_ID}")) == MODEL_ID


@pytest.mark.parametrize("source", ["runs:/abc/model", None])
def test_a_registered_version_with_no_logged_model_is_refused(source):
    with pytest.raises(ValueError, match=r"models:/chat/3 names a registered version with no logged model"):
        resolve_logged_model_id("models:/chat/3", FakeRegistry(None, source))


@pytest.mark.parametrize("uri", ["models:/chat@champion", "runs:/abc/3"])
def test_an_alias_or_a_run_uri_is_refused_before_the_registry_is_asked(uri):
    registry = FakeRegistry(MODEL_ID, None)
    with pytest.raises(ValueError, match="not a logged model URI"):
        resolve_logged_model_id(uri, registry)
    assert registry.asked == []


def test_several_named_models_travel_in_one_step_parameter_and_a_plain_uri_is_the_one_model():
    uris = {"onnx-chat-int4-b32": "models:/m-1", "onnx-chat-fp32": "models:/m-2"}
    assert join_named_uris(uris) == "onnx-chat-int4-b32=models:/m-1 onnx-chat-fp32=models:/m-2"
    assert split_named_uris(join_named_uris(uris), "onnx-chat") == uris
    assert split_named_uris("models:/m-1", "onnx-chat") == {"onnx-chat": "models:/m-1"}


@pytest.mark.parametrize("value", ["a=models:/m-1 =models:/m-2", "a=models:/m-1 b="])
def test_a_malformed_list_of_named_models_is_refused(value):
    with pytest.raises(ValueError, match="neither a model URI nor"):
        split_named_uris(value, "onnx-chat")


def test_a_name_that_cannot_travel_is_refused():
    with pytest.raises(ValueError, match="cannot name model"):
        join_named_uris({"a b": "models:/m-1"})
