"""Batch scoring on Spark (`batch_score`, local[2]) against one process calling `predict` on batches of 8.

The same 240 capital questions, the same logged model, the same generation length. The Spark side is
timed as a user sees a job (reading, shipping and loading the model in each worker, scoring, writing
Parquet) on an already running session; the session's start is reported apart. The one-process side
runs in its own spawned process (its model load timed apart). Runs alternate; medians and same-run
ratios. Memory: the peak RSS of every Spark Python worker (each holds a model copy), of the Spark
JVM, and of the one-process scorer, sampled from /proc while the runs go.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.report import write_report

MODELS = {"tiny-phi3": "builtin:tiny-phi3", "bench-phi3-100m": "builtin:bench-phi3-100m"}


def capital_requests(count: int) -> list[dict]:
    """`count` capital questions: every country in each phrasing in turn."""
    from slmflow.fetch.builtin import QUESTION_TEMPLATES, capital_pairs

    pairs = capital_pairs()
    requests = []
    for index in range(count):
        template = QUESTION_TEMPLATES[(index // len(pairs)) % len(QUESTION_TEMPLATES)]
        question = template.format(country=pairs[index % len(pairs)][0])
        requests.append({"id": str(index), "messages": [{"role": "user", "content": question}]})
    return requests


def one_process(model_uri: str, requests: list[dict], batch_size: int, new_tokens: int, tracking_uri: str) -> dict:
    """In a spawned process: load the model, then predict over the rows in batches."""
    import mlflow

    from slmflow.evaluation.runner import peak_rss_mb

    mlflow.set_tracking_uri(tracking_uri)
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    loaded = time.perf_counter()
    answered = 0
    for start in range(0, len(requests), batch_size):
        answered += len(model.predict(requests[start : start + batch_size], params={"max_tokens": new_tokens}))
    finished = time.perf_counter()
    return {"load_s": loaded - started, "score_s": finished - loaded, "rows": answered, "peak_rss_mb": peak_rss_mb()}


class ProcessMemory:
    """Peak RSS per process of the Spark JVM and its Python workers, sampled every 0.1 s."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ProcessMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = self._psutil.Process()
        while not self._stop.wait(0.1):
            for process in me.children(recursive=True):
                try:
                    kind = _kind(process.cmdline(), process.parent().cmdline())
                    rss = process.memory_info().rss / 2**20
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                    continue
                if kind:
                    self.peaks[process.pid] = (kind, max(rss, self.peaks.get(process.pid, (kind, 0.0))[1]))

    def of(self, kind: str) -> list[float]:
        return sorted(rss for k, rss in self.peaks.values() if k == kind)


def _kind(cmdline: list[str], parent_cmdline: list[str]) -> str | None:
    """The JVM, a Python worker (forked by the pyspark daemon), or something else."""
    if "org.apache.spark.deploy.SparkSubmit" in " ".join(cmdline):
        return "jvm"
    if "pyspark.daemon" in " ".join(parent_cmdline):
        return "python_worker"
    return None


def measure(name: str, source: str, rows: int, new_tokens: int, batch_size: int, repeats: int, store: Path) -> dict:
    import mlflow

    from slmflow.batch.spark import score, spark_session
    from slmflow.config import GenerationConfig, RuntimeConfig, Settings, SourceConfig
    from slmflow.fetch.sources import fetch_model
    from slmflow.flavors.onnx_chat import log_onnx_chat_model

    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    fetched = fetch_model(SourceConfig(model=source), Settings.from_environment())
    with mlflow.start_run():
        model_uri = log_onnx_chat_model(fetched.onnx_dir, GenerationConfig(max_new_tokens=new_tokens), RuntimeConfig())
    requests = capital_requests(rows)
    source_file = store / f"requests-{name}.jsonl"
    source_file.write_text("".join(json.dumps(request) + "\n" for request in requests))

    started = time.perf_counter()
    spark = spark_session("local[2]", **{"spark.ui.enabled": "false", "spark.driver.memory": "1g"})
    session_start_s = time.perf_counter() - started
    context = multiprocessing.get_context("spawn")
    spark_runs, single_runs = [], []
    with ProcessMemory() as memory, context.Pool(1) as pool:
        for repeat in range(repeats):

            def run_spark(repeat=repeat) -> None:
                output = store / f"answers-{name}-{repeat}"
                summary = score(spark, model_uri, str(source_file), str(output), {"max_tokens": new_tokens}, batch_size)
                assert summary.rows == rows and summary.errors == 0, summary
                spark_runs.append(summary.seconds)

            def run_single() -> None:
                result = pool.apply(one_process, (model_uri, requests, batch_size, new_tokens, tracking_uri))
                assert result["rows"] == rows, result
                single_runs.append(result)

            for run in (run_spark, run_single) if repeat % 2 == 0 else (run_single, run_spark):
                run()
    spark.stop()
    spark_rps = [rows / seconds for seconds in spark_runs]
    single_rps = [rows / run["score_s"] for run in single_runs]
    workers = memory.of("python_worker")
    return {
        "model": name,
        "rows": rows,
        "new_tokens": new_tokens,
        "batch_size": batch_size,
        "repeats": repeats,
        "cores": os.cpu_count(),
        "spark_master": "local[2]",
        "spark_session_start_s": session_start_s,
        "spark_job_s": spark_runs,
        # The first job in a session also starts the Python workers: what every `batch_score` run pays.
        "spark_first_job_s": spark_runs[0],
        "spark_rows_per_s": statistics.median(spark_rps),
        "one_process_score_s": [run["score_s"] for run in single_runs],
        "one_process_load_s": statistics.median(run["load_s"] for run in single_runs),
        "one_process_rows_per_s": statistics.median(single_rps),
        "ratio_spark_to_one_process": statistics.median(s / o for s, o in zip(spark_rps, single_rps, strict=True)),
        "one_process_peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in single_runs),
        "spark_python_worker_peak_rss_mb": workers,
        "spark_jvm_peak_rss_mb": max(memory.of("jvm"), default=0.0),
        "onnx_weights_mb": sum(f.stat().st_size for f in Path(fetched.onnx_dir).rglob("*") if f.is_file()) / 2**20,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| model | rows | Spark local[2] rows/s | one process, batches of 8, rows/s | ratio (same runs) "
        "| Spark session start + first job | Python worker peak RSS (each) | Spark JVM peak RSS | one process peak RSS "
        "| ONNX weights |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        workers = r["spark_python_worker_peak_rss_mb"]
        worker_text = f"{max(workers):.0f} MB (max of {len(workers)} workers)" if workers else "n/a"
        startup = f"{r['spark_session_start_s']:.0f} s + {r['spark_first_job_s']:.0f} s"
        lines.append(
            f"| {r['model']} | {r['rows']} | {r['spark_rows_per_s']:.1f} | {r['one_process_rows_per_s']:.1f} | "
            f"{r['ratio_spark_to_one_process']:.2f}x | {startup} | {worker_text} | "
            f"{r['spark_jvm_peak_rss_mb']:.0f} MB | {r['one_process_peak_rss_mb']:.0f} MB "
            f"| {r['onnx_weights_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rows", type=int, default=240)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    with tempfile.TemporaryDirectory() as store:
        for name in args.models:
            results.append(
                measure(name, MODELS[name], args.rows, args.new_tokens, args.batch_size, args.repeats, Path(store))
            )
            print(json.dumps(results[-1], indent=2), flush=True)
    write_report("batch-score", results, table(results))


if __name__ == "__main__":
    main()
