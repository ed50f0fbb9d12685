"""Running a chat model over the eval set, each model in its own spawned process.

Each model is loaded with `mlflow.pyfunc.load_model` and called with `predict` as a user would.
It runs in a fresh spawned process so that its load time and peak memory are its own.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slmflow.evaluation.dataset import EvalExample
from slmflow.evaluation.metrics import ExampleResult, ModelReport, score_example
from slmflow.evaluation.model_uris import resolve_logged_model_id

TTFT_SAMPLE = 8  # examples per model timed again through predict_stream for time to first token
WARM_UP = 4  # items answered before a model's expected time is printed


def evaluate_loaded_model(
    predict: Callable[[dict], Any],
    examples: Sequence[EvalExample],
    predict_stream: Callable[[dict], Any] | None = None,
    progress: str | None = None,
    max_tokens: int | None = None,
) -> tuple[list[ExampleResult], list[float]]:
    """Answer every example one request at a time; time a sample again through streaming."""
    from tqdm import tqdm

    def request(example: EvalExample) -> dict[str, Any]:
        return {"messages": list(example.messages), **({"max_tokens": max_tokens} if max_tokens else {})}

    results = []
    for index, example in enumerate(tqdm(examples, desc=progress, disable=progress is None), start=1):
        started = time.perf_counter()
        prediction = predict(request(example))
        results.append(score_example(example, prediction, time.perf_counter() - started))
        if progress is not None and index == min(WARM_UP, len(examples)):
            print(f"{progress}: {expected_time(results, len(examples))}", flush=True)
    ttft = []
    if predict_stream is not None:
        for example in examples[:TTFT_SAMPLE]:
            started = time.perf_counter()
            for chunk in predict_stream(request(example)):
                if _has_text(chunk):
                    ttft.append(time.perf_counter() - started)
                    break
    return results, ttft


def expected_time(done: Sequence[ExampleResult], total: int) -> str:
    """The time the remaining items should take at the rate of the first ones, for a person waiting."""
    spent = sum(r.latency_s for r in done)
    return (
        f"{len(done)} items in {spent:.1f} s; expecting about {spent / len(done) * total:.0f} s for all {total} "
        f"(plus {TTFT_SAMPLE} streamed again for time to first token)"
    )


def _has_text(chunk: Any) -> bool:
    if isinstance(chunk, str):
        return bool(chunk)
    if isinstance(chunk, dict):
        return bool(chunk.get("choices", [{}])[0].get("delta", {}).get("content"))
    return False


def _evaluate_in_this_process(
    name: str, model_uri: str, examples: list[EvalExample], max_tokens: int | None
) -> ModelReport:
    import mlflow

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    load_seconds = time.perf_counter() - started
    stream = model.predict_stream if _supports_streaming(model) else None
    results, ttft = evaluate_loaded_model(model.predict, examples, stream, progress=name, max_tokens=max_tokens)
    return ModelReport(
        name=name,
        model_uri=model_uri,
        load_seconds=load_seconds,
        peak_rss_mb=peak_rss_mb(),
        size_mb=model_size_mb(model_uri),
        results=results,
        ttft_s=ttft,
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started.

    Linux keeps ru_maxrss across exec, so a spawned child would report its parent's peak; VmHWM
    belongs to the current address space alone.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _supports_streaming(model) -> bool:
    """Only a python_model that defines predict_stream streams; other flavors raise on it."""
    python_model = getattr(model, "unwrap_python_model", None)
    try:
        return python_model is not None and hasattr(python_model(), "predict_stream")
    except Exception:  # not a python_model flavor
        return False


def model_size_mb(model_uri: str) -> float:
    """Size of a logged model from its artifact listing, without copying it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    model = client.get_logged_model(resolve_logged_model_id(model_uri, client))
    repository = get_artifact_repository(model.artifact_location)

    def size(path: str | None = None) -> int:
        return sum(size(f.path) if f.is_dir else (f.file_size or 0) for f in repository.list_artifacts(path))

    return size() / 2**20


def evaluate_model(
    name: str, model_uri: str, examples: list[EvalExample], max_tokens: int | None = None
) -> ModelReport:
    """Evaluate one model in a fresh process, so load time and peak RSS belong to it alone."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_evaluate_in_this_process, (name, model_uri, examples, max_tokens))
