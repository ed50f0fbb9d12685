"""Following an alias, with a fake registry and fake loads: what moves, what stays, what is retried."""

from __future__ import annotations

import threading

from slmflow.serving.follow import Follower
from slmflow.serving.routing import Deployment, RoutingTable


class Registry:
    def __init__(self, **aliases: str) -> None:
        self.aliases = dict(aliases)
        self.reads = 0

    def resolve(self, name: str, alias: str) -> str:
        self.reads += 1
        return self.aliases[f"{name}@{alias}"]


def follower(registry: Registry, broken: set[str] = frozenset(), interval: float = 0):  # type: ignore[assignment]
    routes = RoutingTable.of(["models:/chat@champion", "models:/chat/1", "runs:/r/onnx-chat"], lambda uri: "onnx")
    loads: list[str] = []
    closed: list[str] = []
    swaps: list[tuple[str, str, str]] = []

    def deploy(route, version):
        uri = route.ref.version_uri(version)
        if uri in broken:
            raise RuntimeError("cannot load")
        loads.append(uri)
        return Deployment(f"chat/{version}", version, uri, close=lambda: closed.append(uri))

    for route in routes.routes:
        route.swap(Deployment("chat/1", "1", "first"))
    following = Follower(
        routes,
        deploy,
        interval,
        resolve=registry.resolve,
        on_swap=lambda route, deployment, trigger: swaps.append((route.name, deployment.model, trigger)),
    )
    return following, routes, loads, closed, swaps


def test_only_aliases_are_followed_and_a_moved_alias_loads_its_version_and_swaps():
    registry = Registry(**{"chat@champion": "1"})
    following, routes, loads, _, swaps = follower(registry)
    assert [route.name for route in following.routes] == ["chat@champion"]
    assert following.check() == [] and loads == []  # unchanged: nothing loads
    registry.aliases["chat@champion"] = "3"
    [moved] = following.check("webhook")
    assert moved.model == "chat/3" and routes.default.current is moved
    assert loads == ["models:/chat/3"] and swaps == [("chat@champion", "chat/3", "webhook")]
    assert following.check() == [] and loads == ["models:/chat/3"]
    assert routes.routes[1].current is not None and routes.routes[1].current.served == "first"  # a pinned version


def test_a_version_that_fails_to_load_leaves_the_route_and_is_not_retried_until_the_alias_moves(caplog):
    registry = Registry(**{"chat@champion": "2"})
    following, routes, loads, _, swaps = follower(registry, broken={"models:/chat/2"})
    assert following.check() == [] and following.check() == []
    assert routes.default.current is not None and routes.default.current.model == "chat/1"
    assert loads == [] and swaps == [] and "version 2 of chat failed to load" in caplog.text
    registry.aliases["chat@champion"] = "4"
    [moved] = following.check()
    assert moved.model == "chat/4" and following.failed == {}


def test_a_registry_that_cannot_be_read_is_logged_and_the_route_keeps_serving(caplog):
    registry = Registry()  # no alias: the read raises
    following, routes, loads, _, _ = follower(registry)
    assert following.check() == [] and loads == []
    assert routes.default.current is not None and "following chat@champion failed" in caplog.text


def test_the_thread_polls_on_its_interval_and_a_poke_reads_at_once():
    registry = Registry(**{"chat@champion": "1"})
    following, _, _, _, swaps = follower(registry, interval=0)  # 0: no polling, pokes only
    moved = threading.Event()
    following.on_swap = lambda route, deployment, trigger: (
        swaps.append((route.name, deployment.model, trigger)),
        moved.set(),
    )
    following.start()
    try:
        registry.aliases["chat@champion"] = "5"
        assert not moved.wait(0.3) and registry.reads == 0  # no interval: nothing reads on its own
        following.poke()
        assert moved.wait(10)
        assert swaps == [("chat@champion", "chat/5", "webhook")]
    finally:
        following.stop()
    polling, _, _, _, polled = follower(Registry(**{"chat@champion": "6"}), interval=0.05)
    done = threading.Event()
    polling.on_swap = lambda route, deployment, trigger: (polled.append((deployment.model, trigger)), done.set())
    polling.start()
    try:
        assert done.wait(10) and polled == [("chat/6", "poll")]
    finally:
        polling.stop()
