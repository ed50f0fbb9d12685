"""Running an lm-eval task: each model served by `python -m slmflow.serve` in its own process, lm-eval's
`local-chat-completions` client against it, one 0/1 score per item."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from slmflow.evaluation.lm_eval_tasks import LmEvalTask, item_scores


def run_task(task: LmEvalTask, base_url: str, model: str) -> list[bool]:
    """The task's per-item scores for `model` served at `base_url` (…/v1/chat/completions)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's data is local: datasets must not ask the hub
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="local-chat-completions",
        model_args=f"base_url={base_url},model={model},num_concurrent=1,max_retries=1,tokenized_requests=False",
        tasks=[dict(task.config)],
        task_manager=TaskManager(),
        apply_chat_template=True,
        log_samples=True,
    )
    if results is None or task.name not in results.get("samples", {}):
        raise RuntimeError(f"lm-eval returned no samples for task {task.name}")
    return item_scores(results["samples"][task.name], task.metric)


@contextlib.contextmanager
def served(model_uri: str, log_path: Path, timeout: float = 300.0) -> Iterator[tuple[str, str]]:
    """`python -m slmflow.serve` for `model_uri` on a free loopback port; yields its chat completions URL and the
    name it serves the model under (the server refuses any other name with a 404).
    The server runs in its own process group, stopped (the whole group) afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "slmflow.serve", "--model-uri", model_uri, "--port", str(port)]
    with log_path.open("w") as log:
        # The server imports this package from wherever this process does, whatever its working directory.
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            deadline = time.monotonic() + timeout
            while not _ready(f"http://127.0.0.1:{port}/ready"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"python -m slmflow.serve for {model_uri} did not become ready; see {log_path}")
                time.sleep(0.5)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as response:
                model = json.loads(response.read())["data"][0]["id"]
            yield f"http://127.0.0.1:{port}/v1/chat/completions", model
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def score_models(task: LmEvalTask, models: Mapping[str, str], log_dir: Path) -> dict[str, list[bool]]:
    """Each model's per-item scores on the task, each model served in its own process in turn."""
    scores = {}
    for name, uri in models.items():
        with served(uri, log_dir / f"serve-{name}.log") as (base_url, model):
            scores[name] = run_task(task, base_url, model)
    return scores
