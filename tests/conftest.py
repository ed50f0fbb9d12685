"""Shared fixtures: the builtin tiny model (built once per session), its ONNX form, tracking stores."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
os.environ["HF_HUB_OFFLINE"] = "1"  # the tests never reach a hub, and must never wait on one
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One model cache for the whole session, handed to child processes through SLMFLOW_CACHE_DIR."""
    folder = Path(os.environ.get("SLMFLOW_TEST_CACHE_DIR") or tmp_path_factory.mktemp("slmflow-cache"))
    os.environ["SLMFLOW_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def settings(cache_dir):
    from slmflow.config import Settings

    return Settings.from_environment()


@pytest.fixture(scope="session")
def tiny_checkpoint(cache_dir) -> Path:
    from slmflow.builtin import ensure_builtin_model

    return ensure_builtin_model("tiny-phi3", cache_dir)


@pytest.fixture(scope="session")
def tiny_config():
    from slmflow.config import load_config

    return load_config(PROJECT_DIR / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, cache_dir, tiny_config) -> Path:
    from slmflow.onnx_build import build_onnx

    builder = tiny_config.source.builder
    target = cache_dir / "onnx" / f"tests-tiny-int4-b{builder.block_size}-a{builder.accuracy_level}"
    return build_onnx(tiny_checkpoint, target, builder)


@pytest.fixture(scope="session")
def onnx_engine(tiny_onnx):
    from slmflow.onnx_chat import OnnxChatEngine

    return OnnxChatEngine(tiny_onnx)


def _use_store(folder: Path) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session", autouse=True)
def session_store(tmp_path_factory) -> Path:
    """The current tracking store unless a test asks for a fresh one; never the project's mlflow.db."""
    folder = tmp_path_factory.mktemp("session-store")
    _use_store(folder)
    os.chdir(folder)  # MLflow puts a new store's artifacts under ./mlruns: keep them out of the checkout
    return folder


@pytest.fixture
def tracking_store(tmp_path, session_store) -> str:
    """A fresh, empty tracking store (sqlite), made current for this test and its child processes."""
    folder = tmp_path / "store"
    folder.mkdir()
    uri = _use_store(folder)
    yield uri
    _use_store(session_store)


@pytest.fixture(scope="session")
def logged_models(session_store, tiny_onnx, tiny_checkpoint, tiny_config) -> dict[str, str]:
    """Both flavors of the tiny model, logged once: {"onnx-chat": uri, "transformers-chat": uri}."""
    from slmflow.flavors import log_onnx_chat_model, log_transformers_chat_model

    _use_store(session_store)
    with mlflow.start_run():
        onnx_uri = log_onnx_chat_model(tiny_onnx, tiny_config.generation, tiny_config.runtime)
        transformers_uri = log_transformers_chat_model(tiny_checkpoint, tiny_config.source, tiny_config.generation)
    return {"onnx-chat": onnx_uri, "transformers-chat": transformers_uri}


@pytest.fixture(scope="session")
def onnx_pyfunc(logged_models):
    return mlflow.pyfunc.load_model(logged_models["onnx-chat"])


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """One PostgreSQL and one `mlflow server` (basic-auth, proxied artifacts) for the session.

    Tests that need isolation use their own experiment or registered model name on it. The
    credentials go to child processes through the environment, as a scheduled job's would.
    """
    from tests.tracking_server import team_tracking_server

    with team_tracking_server(tmp_path_factory.mktemp("tracking-server"), free_port) as server:
        os.environ.update(server.credentials)
        yield server


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


@pytest.fixture(scope="session")
def spark():
    """One local Spark session (2 cores, small memory) for every Spark test; stopped at the end."""
    from slmflow.batch.spark import spark_session

    session = spark_session(
        "local[2]",
        **{"spark.driver.memory": "1g", "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"},
    )
    yield session
    session.stop()
