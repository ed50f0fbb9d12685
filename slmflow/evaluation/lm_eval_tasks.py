"""EleutherAI lm-evaluation-harness tasks as eval suites.

A local task YAML (`output_type: generate_until`, its data a local file) is run by lm-eval's
`local-chat-completions` client against each model served by `python -m slmflow.serve`, one process per
model. Each item's score (a 0/1 metric, exact match by default) then feeds the same paired statistics as
the built-in suites: the same items for every model, so differences are paired.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slmflow.errors import ConfigError

FIELD = "evaluation.lm_eval_task"
SERVED_MODEL = "slmflow"  # the name lm-eval sends; the server answers with the model it serves


@dataclass(frozen=True)
class LmEvalTask:
    name: str
    metric: str  # the first of the task's metric_list: each item's 0/1 score
    config: dict[str, Any]  # the task YAML with its data files made absolute


def load_task(path: Path) -> LmEvalTask:
    """The task at `path`, checked as the config is: a generate_until task with a metric and local data."""

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{FIELD}: {path}: {problem}")

    if not path.is_file():
        raise refuse("file not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise refuse(f"not YAML: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise refuse("not an lm-eval task (no 'task' name)")
    if config.get("output_type") != "generate_until":
        raise refuse(f"output_type must be generate_until (chat completions), got {config.get('output_type')!r}")
    metrics = config.get("metric_list") or []
    if not metrics or not isinstance(metrics[0], dict) or "metric" not in metrics[0]:
        raise refuse("metric_list needs at least one metric (each item's 0/1 score)")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if not isinstance(files, dict) or not files:
        raise refuse("dataset_kwargs.data_files must name the task's local data (the hub is not reached)")
    absolute = {}
    for split, name in files.items():
        data = path.parent / str(name)
        if not data.is_file():
            raise refuse(f"data file not found: {data}")
        absolute[split] = str(data)
    config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": absolute}
    return LmEvalTask(config["task"], str(metrics[0]["metric"]), config)


def item_scores(samples: Sequence[Mapping[str, Any]], metric: str) -> list[bool]:
    """Each item's 0/1 score from lm-eval's logged samples, in document order."""
    scores = []
    for sample in sorted(samples, key=lambda s: int(s["doc_id"])):
        value = sample.get(metric)
        if value not in (0, 1, True, False):
            raise ValueError(f"lm-eval item {sample.get('doc_id')}: {metric} is {value!r}, not a 0/1 score")
        scores.append(bool(value))
    if not scores:
        raise ValueError("lm-eval returned no items")
    return scores


def run_task(task: LmEvalTask, base_url: str) -> list[bool]:
    """The task's per-item scores for the model served at `base_url` (…/v1/chat/completions)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's data is local: datasets must not ask the hub
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(
        model="local-chat-completions",
        model_args=f"base_url={base_url},model={SERVED_MODEL},num_concurrent=1,max_retries=1,tokenized_requests=False",
        tasks=[dict(task.config)],
        task_manager=TaskManager(),
        apply_chat_template=True,
        log_samples=True,
    )
    if results is None or task.name not in results.get("samples", {}):
        raise RuntimeError(f"lm-eval returned no samples for task {task.name}")
    return item_scores(results["samples"][task.name], task.metric)


@contextlib.contextmanager
def served(model_uri: str, log_path: Path, timeout: float = 300.0) -> Iterator[str]:
    """`python -m slmflow.serve` for `model_uri` on a free loopback port; yields its chat completions URL.
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
            yield f"http://127.0.0.1:{port}/v1/chat/completions"
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
        with served(uri, log_dir / f"serve-{name}.log") as base_url:
            scores[name] = run_task(task, base_url)
    return scores
