"""The routing table and the swap bookkeeping, pure: which route a `model` names, and when an old version closes."""

from __future__ import annotations

import pytest

from slmflow.serving.routing import Deployment, RegistryRef, Route, RoutingTable, UnknownModelError, model_id


@pytest.mark.parametrize(
    ("uri", "ref"),
    [
        ("models:/chat@champion", RegistryRef("chat", alias="champion")),
        ("models:/chat/3", RegistryRef("chat", version="3")),
        ("models:/chat", RegistryRef("chat")),
        ("models:/m-0123abcd", None),  # a logged model's id names no registered model
        ("runs:/abc/onnx-chat", None),
        ("/some/folder", None),
        ("models:/chat@champion/extra", None),
    ],
)
def test_registry_references_are_read_from_model_uris(uri, ref):
    assert RegistryRef.parse(uri) == ref


def test_a_version_has_its_own_uri_and_answers_as_name_slash_version():
    assert RegistryRef("chat", alias="champion").version_uri("7") == "models:/chat/7"
    assert model_id("chat", "7") == "chat/7" and model_id("onnx-chat", None) == "onnx-chat"


def deployment(model: str, closed: list[str] | None = None) -> Deployment[str]:
    version = model.rsplit("/", 1)[-1] if "/" in model else None
    return Deployment(model, version, served=model, close=lambda: closed.append(model) if closed is not None else None)


def table(*uris: str) -> RoutingTable[str]:
    routes = RoutingTable.of(list(uris), lambda uri: "onnx-chat")
    for route, version in zip(routes.routes, ("1", "2", "3"), strict=False):
        name = route.ref.name if route.ref else route.name
        route.swap(deployment(model_id(name, version if route.ref else None)))
    return routes


def test_requests_are_routed_by_their_model_field_and_the_first_route_is_the_default():
    routes = table("models:/chat@champion", "models:/chat@challenger", "models:/other/5")
    champion, challenger, other = routes.routes
    assert [route.name for route in routes.routes] == ["chat@champion", "chat@challenger", "other"]
    assert routes.resolve(None) is champion and routes.resolve("") is champion
    assert routes.resolve("chat@challenger") is challenger
    assert routes.resolve("chat") is champion  # a model name: its first route
    assert routes.resolve("chat/2") is challenger  # the version an answer named
    assert routes.resolve("other") is other and routes.resolve("other/3") is other


@pytest.mark.parametrize("model", ["chat@nope", "chat/9", "gpt-4o", "CHAT@champion", "chat@champion "])
def test_an_unknown_model_is_refused_with_the_names_that_exist(model):
    routes = table("models:/chat@champion", "models:/chat@challenger")
    with pytest.raises(UnknownModelError) as refused:
        routes.resolve(model)
    assert refused.value.model == model
    assert refused.value.known == sorted(["chat@champion", "chat", "chat/1", "chat@challenger", "chat/2"])


def test_two_uris_may_not_serve_under_one_name():
    with pytest.raises(ValueError, match="same name"):
        RoutingTable.of(["models:/chat@champion", "models:/chat@champion"], str)
    with pytest.raises(ValueError, match="at least one"):
        RoutingTable.of([], str)


def test_a_swap_moves_new_requests_and_the_old_version_closes_when_its_last_request_ends():
    closed: list[str] = []
    drained: list[str] = []
    route: Route[str] = Route("chat@champion", "models:/chat@champion", None, lambda d: drained.append(d.model))
    assert route.acquire() is None  # nothing loaded yet
    first = deployment("chat/1", closed)
    assert route.swap(first) is None
    a, b = route.acquire(), route.acquire()
    assert a is b is first and first.in_flight == 2

    second = deployment("chat/2", closed)
    assert route.swap(second) is first
    assert route.acquire() is second  # new requests go to the new version at once
    assert first.retired and not first.closed and route.draining == [first]
    route.release(first)
    assert closed == [] and first.in_flight == 1  # one request still runs on version 1
    route.release(first)
    assert closed == ["chat/1"] == drained and first.closed and route.draining == []
    assert not second.retired and not second.closed


def test_an_idle_version_closes_at_the_swap_and_a_release_too_many_is_an_error():
    closed: list[str] = []
    route: Route[str] = Route("r", "u", None, lambda d: None)
    first, second = deployment("chat/1", closed), deployment("chat/2", closed)
    route.swap(first)
    route.swap(second)
    assert closed == ["chat/1"] and route.draining == []
    with pytest.raises(RuntimeError, match="released more often"):
        route.release(second)


def test_shutdown_closes_the_current_and_the_draining_versions_once_each():
    closed: list[str] = []
    route: Route[str] = Route("r", "u", None, lambda d: None)
    first, second = deployment("chat/1", closed), deployment("chat/2", closed)
    route.swap(first)
    held = route.acquire()
    route.swap(second)
    route.close_all()
    assert sorted(closed) == ["chat/1", "chat/2"] and route.current is None
    assert held is not None
    route.release(held)  # the request that was running ends after the shutdown: no second close
    assert sorted(closed) == ["chat/1", "chat/2"]


def test_a_failing_close_is_logged_and_the_route_goes_on(caplog):
    route: Route[str] = Route("r", "u", None, lambda d: None)

    def broken() -> None:
        raise OSError("disk gone")

    route.swap(Deployment("chat/1", "1", "x", close=broken))
    route.swap(deployment("chat/2"))
    assert route.current is not None and route.current.model == "chat/2"
    assert "closing chat/1 failed" in caplog.text
