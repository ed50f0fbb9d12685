"""Wall time of the offline pipeline: first run vs re-runs with nothing changed (every step reused).

Two measurements: a re-run on the same machine against a local sqlite store, and the scheduled
re-run on a fresh machine (a new clone, an empty model cache) against a team's tracking server
(PostgreSQL + `mlflow server` with basic-auth and proxied artifacts, started here on loopback).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_report
from testkit.processes import free_port
from testkit.tracking_server import team_tracking_server

PROJECT_DIR = Path(__file__).resolve().parent.parent
RERUNS = 3


def timed_run(project: Path, cwd: Path, **env: str) -> float:
    command = [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local"]
    command += ["-P", "config=configs/tiny.yaml"]
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, check=True, capture_output=True)
    return time.perf_counter() - started


def same_machine_rerun() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        first = timed_run(PROJECT_DIR, Path(folder), MLFLOW_TRACKING_URI=store)
        reruns = [timed_run(PROJECT_DIR, Path(folder), MLFLOW_TRACKING_URI=store) for _ in range(RERUNS)]
    rerun = statistics.median(reruns)
    result = {"first_run_s": first, "rerun_median_s": rerun, "rerun_over_first": rerun / first}
    table = (
        "| first run (s) | re-run, nothing changed (s, median of 3) | re-run / first |\n|---|---|---|\n"
        f"| {first:.1f} | {rerun:.1f} | {rerun / first:.2f} |"
    )
    write_report("pipeline-rerun", result, table)


def clone(destination: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_DIR), str(destination)], check=True)
    return destination


def fresh_machine_rerun() -> None:
    """Machine A runs first with an empty cache; each re-run is a new machine: a new clone and an empty cache."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with team_tracking_server(root, free_port) as server:
            env = {"MLFLOW_TRACKING_URI": server.uri, **server.credentials}
            machines = ["a", *(f"fresh-{i}" for i in range(RERUNS))]
            first, *reruns = [
                timed_run(clone(root / name / "slmflow"), root, SLMFLOW_CACHE_DIR=str(root / name / "cache"), **env)
                for name in machines
            ]
    rerun = statistics.median(reruns)
    result = {"first_run_s": first, "fresh_machine_rerun_median_s": rerun, "rerun_over_first": rerun / first}
    table = (
        "| first run, empty cache (s) | re-run on a fresh machine, nothing changed (s, median of 3) "
        "| re-run / first (goal ≤ 0.20) |\n|---|---|---|\n"
        f"| {first:.1f} | {rerun:.1f} | {rerun / first:.2f} |"
    )
    write_report("pipeline-scheduled-rerun", result, table)


def main() -> None:
    same_machine_rerun()
    fresh_machine_rerun()


if __name__ == "__main__":
    main()
