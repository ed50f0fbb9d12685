"""Starting and talking to real processes on loopback: free ports, commands, servers in their own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_command(command: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run a command with the test environment (tracking store, cache) plus `env`; capture its output."""
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def mlflow_cli() -> list[str]:
    return [sys.executable, "-m", "mlflow"]


def http_status(url: str, timeout: float = 5) -> int:
    """The status of a GET, or 0 while nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


@contextlib.contextmanager
def launched_server(command: list[str], ready_url: str, log_path: Path, timeout: float = 300, **env: str):
    """A server started in the project folder, in its own process group, yielded once `ready_url` answers 200;
    the whole group is killed after."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env},
        )
        try:
            deadline = time.monotonic() + timeout
            while http_status(ready_url) != 200:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[:4]} did not become ready; see {log_path}")
                time.sleep(0.5)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):  # whatever the group still holds
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
