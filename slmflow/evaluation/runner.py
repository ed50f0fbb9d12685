"""Measuring chat models on an eval set: quality and speed, each model in its own process.

Each model is loaded with `mlflow.pyfunc.load_model` and called with `predict` as a user would.
It runs in a fresh spawned process so that its load time and peak memory are its own.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmflow.chat import answer_text, parse_messages, single_prediction
from slmflow.errors import ConfigError

TTFT_SAMPLE = 8  # examples per model timed again through predict_stream for time to first token


@dataclass(frozen=True)
class EvalExample:
    messages: tuple[dict[str, str], ...]
    reference: str
    answer: str

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


def load_eval_set(path: Path, max_examples: int | None = None) -> list[EvalExample]:
    """JSONL rows of {"messages": [...], "reference": full answer, "answer": the key fact}."""
    if not path.is_file():
        raise ConfigError(f"eval set not found: {path}")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            examples.append(
                EvalExample(
                    messages=tuple(parse_messages(row["messages"], where=f"{path}:{number}")),
                    reference=str(row["reference"]),
                    answer=str(row.get("answer", row["reference"])),
                )
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}:{number}: bad eval row: {error}") from None
    if not examples:
        raise ConfigError(f"eval set {path} has no rows")
    return examples[:max_examples] if max_examples else examples


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def contains_answer(prediction: str, answer: str) -> bool:
    return f" {normalize(answer)} " in f" {normalize(prediction)} "


def rouge_l(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, prediction)["rougeL"].fmeasure


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile, as numpy's default."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ExampleResult:
    answer: str
    latency_s: float
    completion_tokens: int
    correct: bool
    exact: bool
    rouge_l: float


@dataclass
class ModelReport:
    name: str
    model_uri: str
    load_seconds: float
    peak_rss_mb: float
    size_mb: float
    results: list[ExampleResult]
    ttft_s: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        latencies = [r.latency_s for r in self.results]
        tokens = sum(r.completion_tokens for r in self.results)
        metrics = {
            "accuracy": statistics.fmean(r.correct for r in self.results),
            "exact_match": statistics.fmean(r.exact for r in self.results),
            "rouge_l": statistics.fmean(r.rouge_l for r in self.results),
            "latency_p50_s": percentile(latencies, 0.5),
            "latency_p95_s": percentile(latencies, 0.95),
            "tokens_per_second": tokens / sum(latencies) if sum(latencies) else 0.0,
            "completion_tokens": float(tokens),
            "load_seconds": self.load_seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "size_mb": self.size_mb,
        }
        if self.ttft_s:
            metrics["ttft_p50_s"] = percentile(self.ttft_s, 0.5)
        return metrics


def completion_tokens(prediction: Any) -> int:
    prediction = single_prediction(prediction)
    if isinstance(prediction, dict):
        return int(prediction.get("usage", {}).get("completion_tokens", 0))
    return 0


def score_example(example: EvalExample, prediction: Any, latency_s: float) -> ExampleResult:
    text = answer_text(prediction)
    return ExampleResult(
        answer=text,
        latency_s=latency_s,
        completion_tokens=completion_tokens(prediction),
        correct=contains_answer(text, example.answer),
        exact=exact_match(text, example.reference),
        rouge_l=rouge_l(text, example.reference),
    )


def evaluate_loaded_model(
    predict: Callable[[dict], Any],
    examples: Sequence[EvalExample],
    predict_stream: Callable[[dict], Any] | None = None,
    progress: str | None = None,
) -> tuple[list[ExampleResult], list[float]]:
    """Answer every example one request at a time; time a sample again through streaming."""
    from tqdm import tqdm

    results = []
    for example in tqdm(examples, desc=progress, disable=progress is None):
        request = {"messages": list(example.messages)}
        started = time.perf_counter()
        prediction = predict(request)
        results.append(score_example(example, prediction, time.perf_counter() - started))
    ttft = []
    if predict_stream is not None:
        for example in examples[:TTFT_SAMPLE]:
            started = time.perf_counter()
            for chunk in predict_stream({"messages": list(example.messages)}):
                if _has_text(chunk):
                    ttft.append(time.perf_counter() - started)
                    break
    return results, ttft


def _has_text(chunk: Any) -> bool:
    if isinstance(chunk, str):
        return bool(chunk)
    if isinstance(chunk, dict):
        return bool(chunk.get("choices", [{}])[0].get("delta", {}).get("content"))
    return False


def _evaluate_in_this_process(name: str, model_uri: str, examples: list[EvalExample]) -> ModelReport:
    import mlflow

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    load_seconds = time.perf_counter() - started
    stream = model.predict_stream if _supports_streaming(model) else None
    results, ttft = evaluate_loaded_model(model.predict, examples, stream, progress=name)
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
    """Size of a logged model (`models:/<model_id>`) from its artifact listing, without copying it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    model = MlflowClient().get_logged_model(model_uri.removeprefix("models:/"))
    repository = get_artifact_repository(model.artifact_location)

    def size(path: str | None = None) -> int:
        return sum(size(f.path) if f.is_dir else (f.file_size or 0) for f in repository.list_artifacts(path))

    return size() / 2**20


def evaluate_model(name: str, model_uri: str, examples: list[EvalExample]) -> ModelReport:
    """Evaluate one model in a fresh process, so load time and peak RSS belong to it alone."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_evaluate_in_this_process, (name, model_uri, examples))


def agreement_rate(first: ModelReport, second: ModelReport) -> float:
    pairs = zip(first.results, second.results, strict=True)
    return statistics.fmean(normalize(a.answer) == normalize(b.answer) for a, b in pairs)


def example_table(examples: Sequence[EvalExample], reports: Sequence[ModelReport]) -> dict[str, list]:
    table: dict[str, list] = {
        "question": [e.question for e in examples],
        "reference": [e.reference for e in examples],
    }
    for report in reports:
        table[f"{report.name}/answer"] = [r.answer for r in report.results]
        table[f"{report.name}/correct"] = [r.correct for r in report.results]
        table[f"{report.name}/latency_s"] = [round(r.latency_s, 4) for r in report.results]
    return table


@contextmanager
def _figure(path: Path, size: tuple[float, float]) -> Iterator[Any]:
    """A matplotlib axis drawn off-screen and saved as PNG on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=size)
    try:
        yield axis
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)


def plot_latency(reports: Sequence[ModelReport], path: Path) -> None:
    with _figure(path, (7, 4)) as axis:
        axis.boxplot([[r.latency_s * 1000 for r in report.results] for report in reports], showmeans=True)
        axis.set_xticks(range(1, len(reports) + 1), [report.name for report in reports])
        axis.set_ylabel("latency per request (ms, lower is better)")
        axis.set_title("Latency distribution per model")


def plot_accuracy_vs_speed(reports: Sequence[ModelReport], path: Path) -> None:
    points = [(report.name, report.metrics()) for report in reports]
    with _figure(path, (6, 4)) as axis:
        for name, metrics in points:
            axis.scatter(metrics["tokens_per_second"], metrics["accuracy"], s=80)
            axis.annotate(
                f"{name}\n{metrics['accuracy']:.0%}, {metrics['tokens_per_second']:.0f} tok/s",
                (metrics["tokens_per_second"], metrics["accuracy"]),
                textcoords="offset points",
                xytext=(0, -28),
                ha="center",
                fontsize=8,
            )
        axis.set_xlabel("completion tokens / s (higher is better)")
        axis.set_ylabel("accuracy, contains answer (higher is better)")
        axis.set_ylim(-0.15, 1.1)
        axis.set_xlim(0, 1.25 * max(m["tokens_per_second"] for _, m in points) or 1)
        axis.set_title("Accuracy vs speed")


def report_summary(reports: Sequence[ModelReport]) -> dict[str, Any]:
    return {
        report.name: {
            "model_uri": report.model_uri,
            "metrics": report.metrics(),
            "ttft_s": report.ttft_s,
            "results": [asdict(r) for r in report.results],
        }
        for report in reports
    }


CANDIDATE_TAG_PREFIX = "slmflow.candidate."


def log_reports(
    examples: Sequence[EvalExample], reports: Sequence[ModelReport], eval_set: Path
) -> dict[str, dict[str, float]]:
    """Log the eval set as the run's input, metrics (prefixed by model name), the per-example table,
    plots and the full report."""
    import tempfile

    import mlflow
    import pandas as pd

    frame = pd.DataFrame(
        {"messages": [json.dumps(e.messages) for e in examples], "reference": [e.reference for e in examples]}
    )
    mlflow.log_input(mlflow.data.from_pandas(frame, source=str(eval_set), name=eval_set.stem), context="evaluation")

    metrics_by_model = {report.name: report.metrics() for report in reports}
    for name, metrics in metrics_by_model.items():
        mlflow.log_metrics({f"{name}/{key}": value for key, value in metrics.items()})
        mlflow.set_tag(CANDIDATE_TAG_PREFIX + name, next(r.model_uri for r in reports if r.name == name))
    if len(reports) == 2:
        mlflow.log_metric("agreement_rate", agreement_rate(*reports))
    mlflow.log_param("eval_examples", len(examples))
    mlflow.log_table(example_table(examples, reports), artifact_file="eval/examples.json")
    mlflow.log_dict(report_summary(reports), "eval/report.json")
    with tempfile.TemporaryDirectory() as folder:
        for filename, plot in (("latency.png", plot_latency), ("accuracy_vs_speed.png", plot_accuracy_vs_speed)):
            plot(reports, Path(folder) / filename)
            mlflow.log_artifact(str(Path(folder) / filename), artifact_path="eval/plots")
    return metrics_by_model
