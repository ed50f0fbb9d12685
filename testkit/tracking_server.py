"""A team's tracking server, really started: PostgreSQL 15 and `mlflow server` behind basic-auth, on loopback.

The server proxies artifacts (`--artifacts-destination`), so clients log to `mlflow-artifacts:/`
URIs through it and share nothing else with it, as on a team's server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ADMIN = "admin"


def postgres_bin(name: str) -> str:
    """PostgreSQL's tools: on the PATH, or where Debian's `postgresql` package puts them."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (bin/test installs Debian's postgresql)")
    return found


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    if os.geteuid() != 0:
        return command
    return ["su", "postgres", "-c", subprocess.list2cmdline(command)]


@dataclass
class Postgres:
    data_dir: Path
    port: int

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls, port: int) -> Postgres:
        # Its own folder under the system temp dir: pytest's are private to root, and postgres must enter it.
        folder = Path(tempfile.mkdtemp(prefix="slmflow-postgres-"))
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        data = folder / "data"
        subprocess.run(
            _as_postgres([postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {folder} -h 127.0.0.1 -c fsync=off -c max_connections=200"
        start = [postgres_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]
        subprocess.run(
            _as_postgres(start),
            check=True,
            capture_output=True,
            timeout=120,
        )
        return cls(data, port)

    def create_database(self, name: str) -> str:
        subprocess.run(
            [postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            check=True,
            capture_output=True,
        )
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([postgres_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


@dataclass
class TrackingServer:
    uri: str
    password: str
    process: subprocess.Popen
    log: Path

    @property
    def credentials(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": self.password}

    @classmethod
    def start(cls, folder: Path, backend_uri: str, auth_uri: str, port: int, password: str) -> TrackingServer:
        folder.mkdir(parents=True, exist_ok=True)
        auth_config = folder / "basic_auth.ini"
        auth_config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {auth_uri}\nadmin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # One password check per minute per user instead of one per request: the suite is request-heavy.
            "auth_cache_ttl_seconds = 60\n"
        )
        env = {
            **os.environ,
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
        }
        log = folder / "server.log"
        command = [
            *[sys.executable, "-m", "mlflow", "server"],
            *["--backend-store-uri", backend_uri, "--artifacts-destination", str(folder / "artifacts")],
            *["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--app-name", "basic-auth"],
        ]
        with log.open("w") as output:
            # Its own process group: the server starts workers and consumers that must all stop with it.
            process = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = cls(f"http://127.0.0.1:{port}", password, process, log)
        try:
            server._wait_until_up()
        except BaseException:  # an interrupted start too: never leave the group running
            server.stop()
            raise
        return server

    def _wait_until_up(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        # Workers that outlived the group leader still belong to the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def team_tracking_server(folder: Path, free_port: Callable[[], int]) -> Iterator[TrackingServer]:
    """PostgreSQL and `mlflow server` (basic-auth, a random admin password), both stopped afterwards."""
    postgres = Postgres.start(free_port())
    try:
        server = TrackingServer.start(
            folder / "server",
            backend_uri=postgres.create_database("mlflow"),
            auth_uri=postgres.create_database("mlflow_auth"),
            port=free_port(),
            password=os.urandom(12).hex(),
        )
        try:
            yield server
        finally:
            server.stop()
    finally:
        postgres.stop()
