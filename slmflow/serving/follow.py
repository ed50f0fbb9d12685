"""Following registry aliases: a background thread that notices an alias move and swaps the route.

It reads each followed alias from the registry every `interval_seconds` (0: never on its own), and
at once when `poke()` is called (a verified MLflow webhook). A moved alias loads its new version on
this thread, beside the one serving, so requests keep being answered during the load; then the
route is swapped (`slmflow.serving.routing.Route.swap`). A version that fails to load is logged and
not tried again until the alias moves on; the route keeps serving the version it has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from slmflow.serving.routing import Deployment, Route, RoutingTable

log = logging.getLogger(__name__)


def registry_version(name: str, alias: str) -> str:
    """The version an alias points at now, read from the registry."""
    from mlflow.tracking import MlflowClient

    return str(MlflowClient().get_model_version_by_alias(name, alias).version)


class Follower:
    def __init__(
        self,
        table: RoutingTable[Any],
        deploy: Callable[[Route[Any], str], Deployment[Any]],
        interval_seconds: float,
        resolve: Callable[[str, str], str] = registry_version,
        on_swap: Callable[[Route[Any], Deployment[Any], str], None] = lambda route, deployment, trigger: None,
    ) -> None:
        self.table, self.deploy, self.interval, self.resolve, self.on_swap = (
            table,
            deploy,
            interval_seconds,
            resolve,
            on_swap,
        )
        self.failed: dict[str, str] = {}  # route name -> the version that failed to load
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poked = False
        self._thread: threading.Thread | None = None

    @property
    def routes(self) -> list[Route[Any]]:
        return [route for route in self.table.routes if route.follows]

    def start(self) -> None:
        if not self.routes:
            return
        self._thread = threading.Thread(target=self._run, name="slmflow-follow", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Check every followed alias now (a webhook said one moved)."""
        self._poked = True
        self._wake.set()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval if self.interval > 0 else None)
            if self._stop.is_set():
                return
            self._wake.clear()
            trigger = "webhook" if self._poked else "poll"
            self._poked = False
            self.check(trigger)

    def check(self, trigger: str = "poll") -> list[Deployment[Any]]:
        """Read every followed alias; load and swap in each version that moved. The new deployments."""
        swapped = []
        for route in self.routes:
            try:
                deployment = self._follow(route, trigger)
            except Exception:
                log.exception("following %s failed; it keeps serving what it has", route.name)
                continue
            if deployment is not None:
                swapped.append(deployment)
        return swapped

    def _follow(self, route: Route[Any], trigger: str) -> Deployment[Any] | None:
        assert route.ref is not None and route.ref.alias is not None
        version = self.resolve(route.ref.name, route.ref.alias)
        current = route.current
        if (current is not None and current.version == version) or self.failed.get(route.name) == version:
            return None
        log.info("%s moved to version %s (%s): loading it", route.name, version, trigger)
        try:
            deployment = self.deploy(route, version)
        except Exception:
            log.exception("version %s of %s failed to load; %s stays where it is", version, route.ref.name, route.name)
            self.failed[route.name] = version
            return None
        self.failed.pop(route.name, None)
        old = route.swap(deployment)
        log.info(
            "%s now answers as %s (was %s)", route.name, deployment.model, old.model if old is not None else "nothing"
        )
        self.on_swap(route, deployment, trigger)
        return deployment
