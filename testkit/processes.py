"""Starting and talking to real processes on loopback: free ports, commands, servers in their own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PROJECT_DIR = Path(__file__).resolve().parent.parent
T = TypeVar("T")


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


def kill_job_when(
    command: list[str], cwd: Path, ready: Callable[[], T | None], what: str, timeout: float = 900, **env: str
) -> T:
    """Start `command` (output discarded) in its own process group, poll `ready()` until it gives something, then
    kill the whole group at once, as when the job's machine goes away, and return what `ready` gave.

    Fails when the job ends before it is ready or `what` does not happen within `timeout` seconds."""
    job = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the kill takes the job and every process it started
    )
    try:
        deadline = time.monotonic() + timeout
        while (found := ready()) is None:
            if job.poll() is not None:
                raise AssertionError(f"the job ended (exit code {job.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
            time.sleep(1)
        return found
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
