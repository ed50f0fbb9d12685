"""Which loaded model answers a request: the routing table, and the bookkeeping of a version swap.

A route is one `--model-uri`. A registry URI with an alias (`models:/<name>@champion`) is followed:
when the alias moves, the new version is loaded beside the old one (each `Deployment` has its own
engine and batcher) and `Route.swap` points the route at it in one step. A request holds the
deployment it started on (`acquire` … `release`) and finishes there; the old deployment is closed
once it is retired and its last request is released.

Names a request's `model` may give (`RoutingTable.resolve`): nothing (the first route); a route's
name (`<name>@<alias>`, or the URI's model name for a route without an alias); a model name (the
first route serving it); or a version being served (`<name>/<version>`, as `/v1/models` and every
answer name it). Anything else is unknown: HTTP 404, code `model_not_found`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))?/?$")


@dataclass(frozen=True)
class RegistryRef:
    """A registered model URI: `models:/<name>@<alias>` or `models:/<name>/<version>`."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, model_uri: str) -> RegistryRef | None:
        """The reference, or None for any other URI (`runs:/…`, `models:/m-<model id>`, a path)."""
        match = _REGISTRY_URI.match(model_uri.strip())
        if match is None or match["name"].startswith("m-"):
            return None
        return cls(match["name"], match["alias"], match["version"])

    def version_uri(self, version: str) -> str:
        return f"models:/{self.name}/{version}"


def model_id(name: str, version: str | None) -> str:
    """The name a loaded version answers as: `<name>/<version>`, or the bare name when it has no version."""
    return f"{name}/{version}" if version else name


ServedT = TypeVar("ServedT")


@dataclass(eq=False)
class Deployment(Generic[ServedT]):
    """One loaded version: what serves it (model, engine, batcher), and the requests it has in flight."""

    model: str  # `<name>/<version>`: the `model` field of every answer it gives
    version: str | None
    served: ServedT
    close: Callable[[], None] = lambda: None
    in_flight: int = 0
    retired: bool = False
    closed: bool = False


class Route(Generic[ServedT]):
    """A routing pointer to the deployment that takes new requests; swapped atomically, drained after."""

    def __init__(self, name: str, uri: str, ref: RegistryRef | None, on_closed: Callable[[Deployment], None]) -> None:
        self.name, self.uri, self.ref = name, uri, ref
        self._current: Deployment[ServedT] | None = None
        self._draining: list[Deployment[ServedT]] = []
        self._lock = threading.Lock()
        self._on_closed = on_closed

    @property
    def current(self) -> Deployment[ServedT] | None:
        return self._current

    @property
    def draining(self) -> list[Deployment[ServedT]]:
        """Retired deployments still finishing requests that started on them."""
        with self._lock:
            return list(self._draining)

    @property
    def follows(self) -> bool:
        return self.ref is not None and self.ref.alias is not None

    def acquire(self) -> Deployment[ServedT] | None:
        """The deployment a new request runs on (None before the first load); release it when answered."""
        with self._lock:
            deployment = self._current
            if deployment is not None:
                deployment.in_flight += 1
            return deployment

    def release(self, deployment: Deployment[ServedT]) -> None:
        with self._lock:
            deployment.in_flight -= 1
            if deployment.in_flight < 0:
                raise RuntimeError(f"{deployment.model} was released more often than acquired")
            drained = self._take_if_drained(deployment)
        if drained:
            self._close(deployment)

    def swap(self, new: Deployment[ServedT]) -> Deployment[ServedT] | None:
        """Point new requests at `new`; the previous deployment is retired, and closed once drained
        (at once if idle). Returns the previous one."""
        with self._lock:
            old, self._current = self._current, new
            drained = False
            if old is not None and old is not new:
                old.retired = True
                self._draining.append(old)
                drained = self._take_if_drained(old)
        if drained and old is not None:
            self._close(old)
        return old

    def close_all(self) -> None:
        """Shutdown: close every deployment, whatever it has in flight."""
        with self._lock:
            everything = [*self._draining, *([self._current] if self._current else [])]
            self._draining, self._current = [], None
        for deployment in everything:
            if not deployment.closed:
                deployment.closed = True
                self._close(deployment)

    def _take_if_drained(self, deployment: Deployment[ServedT]) -> bool:
        """Called with the lock held: whether this retired deployment just became closable."""
        if deployment.retired and deployment.in_flight == 0 and not deployment.closed:
            deployment.closed = True
            if deployment in self._draining:
                self._draining.remove(deployment)
            return True
        return False

    def _close(self, deployment: Deployment[ServedT]) -> None:
        try:
            deployment.close()
        except Exception:
            log.exception("closing %s failed", deployment.model)
        self._on_closed(deployment)


class UnknownModelError(LookupError):
    def __init__(self, model: str, known: Iterable[str]) -> None:
        self.model = model
        self.known = sorted(known)
        super().__init__(f"the model {model!r} does not exist; this server serves {', '.join(self.known)}")


@dataclass
class RoutingTable(Generic[ServedT]):
    """The routes, in the order given; the first is the default."""

    routes: list[Route[ServedT]] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [route.name for route in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"two model URIs serve under the same name: {names}")

    @classmethod
    def of(
        cls,
        uris: list[str],
        fallback_name: Callable[[str], str],
        on_closed: Callable[[Deployment], None] = lambda deployment: None,
    ) -> RoutingTable[Any]:
        if not uris:
            raise ValueError("at least one model URI is needed")
        routes: list[Route[Any]] = []
        for uri in uris:
            ref = RegistryRef.parse(uri)
            if ref is None:
                name = fallback_name(uri)
            elif ref.alias:
                name = f"{ref.name}@{ref.alias}"
            else:
                name = ref.name
            routes.append(Route(name, uri, ref, on_closed))
        return cls(routes)

    @property
    def default(self) -> Route[ServedT]:
        return self.routes[0]

    def resolve(self, model: str | None) -> Route[ServedT]:
        """The route a request's `model` names (see the module's docstring); UnknownModelError if none."""
        if not model:
            return self.default
        for matches in (self._by_route_name, self._by_model_name, self._by_version):
            for route in self.routes:
                if matches(route, model):
                    return route
        raise UnknownModelError(model, self.names())

    def names(self) -> list[str]:
        """Every name a request may use now."""
        names: list[str] = []
        for route in self.routes:
            names.append(route.name)
            if route.ref is not None and route.ref.name not in names:
                names.append(route.ref.name)
            current = route.current
            if current is not None and current.model not in names:
                names.append(current.model)
        return names

    @staticmethod
    def _by_route_name(route: Route, model: str) -> bool:
        return route.name == model

    @staticmethod
    def _by_model_name(route: Route, model: str) -> bool:
        return route.ref is not None and route.ref.name == model

    @staticmethod
    def _by_version(route: Route, model: str) -> bool:
        current = route.current
        return current is not None and current.model == model
