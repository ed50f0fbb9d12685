"""Running a chat model over the eval set, each model in its own spawned process.

Each model is loaded with `mlflow.pyfunc.load_model` and called with `predict` as a user would.
It runs in a fresh spawned process so that its load time and peak memory are its own.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from slmflow.config import EvaluationConfig
from slmflow.evaluation.batching import Answerer, transformers_answerer
from slmflow.evaluation.dataset import EvalExample
from slmflow.evaluation.metrics import ExampleResult, ModelReport, score_example
from slmflow.evaluation.model_uris import resolve_logged_model_id

TTFT_SAMPLE = 8  # examples per model timed again through predict_stream for time to first token
LATENCY_SAMPLE = 16  # examples per model sent again one request at a time for latency, when answers are batched
EVAL_DEADLINE_S = 3600.0  # one batch of eval items, in the evaluation's own process
WARM_UP = 4  # items answered one by one before a model's expected time is printed


def _request(example: EvalExample, max_tokens: int | None) -> dict[str, Any]:
    return {"messages": list(example.messages), **({"max_tokens": max_tokens} if max_tokens else {})}


def latency_sample(total: int, size: int = LATENCY_SAMPLE) -> list[int]:
    """Indices of the items timed one request at a time: spread evenly over the suite (skill after skill), the
    same for every model evaluated on it, so per-item latencies stay paired."""
    if total <= size:
        return list(range(total))
    return [index * total // size for index in range(size)]


@dataclass
class Answers:
    results: list[ExampleResult]
    ttft_s: list[float]
    answer_seconds: float  # the accuracy pass: every item, batched or not
    batch_size: int = 1
    batch_mismatches: int = 0  # sampled items whose one-by-one answer differs from the batched one


def evaluate_loaded_model(
    predict: Callable[[dict], Any],
    examples: Sequence[EvalExample],
    predict_stream: Callable[[dict], Any] | None = None,
    progress: str | None = None,
    max_tokens: int | None = None,
    answer_batch: Answerer | None = None,
    batch_size: int = 1,
) -> Answers:
    """Answer every example, in batches of `batch_size` through `answer_batch` when given, else one request
    at a time; latency stays a per-request measurement (every item, or a sample when batched), and a sample
    is timed again through streaming for time to first token."""
    from tqdm import tqdm

    requests = [_request(example, max_tokens) for example in examples]
    batched = answer_batch is not None and batch_size > 1 and len(examples) > 1
    report = (lambda line: print(f"{progress}: {line}", flush=True)) if progress is not None else (lambda line: None)
    if not batched:
        results = []
        started_all = time.perf_counter()
        for index, (example, request) in enumerate(
            zip(tqdm(examples, desc=progress, disable=progress is None), requests, strict=True), start=1
        ):
            started = time.perf_counter()
            prediction = predict(request)
            results.append(score_example(example, prediction, time.perf_counter() - started))
            if index == min(WARM_UP, len(examples)):
                report(expected_time(results, len(examples)))
        answers = Answers(results, [], time.perf_counter() - started_all)
    else:
        assert answer_batch is not None
        answers = _batched(predict, answer_batch, examples, requests, batch_size, progress, report)
    if predict_stream is not None:
        for request in requests[:TTFT_SAMPLE]:
            started = time.perf_counter()
            for chunk in predict_stream(request):
                if _has_text(chunk):
                    answers.ttft_s.append(time.perf_counter() - started)
                    break
    return answers


def _batched(
    predict: Callable[[dict], Any],
    answer_batch: Answerer,
    examples: Sequence[EvalExample],
    requests: Sequence[dict[str, Any]],
    batch_size: int,
    progress: str | None,
    report: Callable[[str], None],
) -> Answers:
    from tqdm import tqdm

    sampled = {}
    sample_started = time.perf_counter()
    for index in latency_sample(len(examples)):
        started = time.perf_counter()
        prediction = predict(requests[index])
        sampled[index] = score_example(examples[index], prediction, time.perf_counter() - started)
    sample_seconds = time.perf_counter() - sample_started
    report(f"{len(sampled)} single requests timed in {sample_seconds:.1f} s")
    results: list[ExampleResult] = []
    starts = range(0, len(examples), batch_size)
    started_all = time.perf_counter()
    for number, start in enumerate(tqdm(starts, desc=progress, disable=progress is None), start=1):
        chunk = slice(start, start + batch_size)
        predictions = answer_batch(requests[chunk])
        results.extend(
            score_example(example, prediction, None)
            for example, prediction in zip(examples[chunk], predictions, strict=True)
        )
        if number == 1:
            spent = time.perf_counter() - started_all
            report(
                f"batch 1 of {len(starts)} ({batch_size} items) in {spent:.1f} s; expecting about "
                f"{spent * len(starts):.0f} s for all {len(examples)} items (plus up to {TTFT_SAMPLE} streamed "
                "again for time to first token)"
            )
    answer_seconds = time.perf_counter() - started_all
    mismatches = 0
    for index, single in sampled.items():
        mismatches += single.answer != results[index].answer
        results[index] = replace(results[index], latency_s=single.latency_s)
    return Answers(results, [], answer_seconds, batch_size, mismatches)


def expected_time(done: Sequence[ExampleResult], total: int) -> str:
    """The time the remaining items should take at the rate of the first ones, for a person waiting."""
    spent = sum(r.latency_s or 0.0 for r in done)
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
    name: str, model_uri: str, examples: list[EvalExample], max_tokens: int | None, batch_size: int = 1
) -> ModelReport:
    import mlflow

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    load_seconds = time.perf_counter() - started
    stream = model.predict_stream if _supports_streaming(model) else None
    answers = evaluate_loaded_model(
        model.predict,
        examples,
        stream,
        progress=name,
        max_tokens=max_tokens,
        answer_batch=batch_answerer(model, name),
        batch_size=batch_size,
    )
    return ModelReport(
        name=name,
        model_uri=model_uri,
        load_seconds=load_seconds,
        peak_rss_mb=peak_rss_mb(),
        size_mb=model_size_mb(model_uri),
        results=answers.results,
        ttft_s=answers.ttft_s,
        answer_seconds=answers.answer_seconds,
        batch_size=answers.batch_size,
        batch_mismatches=answers.batch_mismatches,
    )


def batch_answerer(model, name: str) -> Answerer | None:
    """How a loaded model answers many requests at once: the transformers flavor through one left-padded
    generate() per batch, a python_model chat model (onnx-chat) through one multi-row predict."""
    if "transformers" in model.metadata.flavors:
        return transformers_answerer(model.get_raw_model(), dict(model.model_config or {}), name)
    if _supports_streaming(model):  # the project's own pyfunc chat model, which batches its rows
        lift_request_deadline(model.unwrap_python_model())
        return lambda requests: list(model.predict(list(requests)))
    return None


def lift_request_deadline(python_model: Any) -> None:
    """A served request stops at the policy's deadline (below the scoring server's 60 s timeout); a batch of
    eval items is no client's request, and on a busy machine it may take longer: give it EVAL_DEADLINE_S."""
    policy = getattr(python_model, "policy", None)
    if policy is not None:
        limits = policy.limits.model_copy(update={"timeout_seconds": EVAL_DEADLINE_S})
        python_model.policy = policy.model_copy(update={"limits": limits})


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
    name: str, model_uri: str, examples: list[EvalExample], max_tokens: int | None = None, batch_size: int = 1
) -> ModelReport:
    """Evaluate one model in a fresh process, so load time and peak RSS belong to it alone."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_evaluate_in_this_process, (name, model_uri, examples, max_tokens, batch_size))


def expected_plan(items: int, models: int, evaluation: EvaluationConfig) -> str:
    """What `evaluate` is about to do, printed before it starts; each model prints its expected time after
    its first batch (or first items), measured on this machine."""
    batch = evaluation.batch_size
    budget = f"{evaluation.max_new_tokens} tokens" if evaluation.max_new_tokens else "the model's max_new_tokens"
    sample = min(LATENCY_SAMPLE, items)
    how = (
        f"answered in batches of {batch}, {sample} of them again one request at a time for latency"
        if batch > 1 and items > 1
        else "one request at a time"
    )
    return (
        f"evaluate: {items} items x {models} models, each in its own process; at most {budget} per answer, {how}, "
        f"up to {TTFT_SAMPLE} streamed for time to first token; each model prints its expected time after its "
        "first batch"
    )
