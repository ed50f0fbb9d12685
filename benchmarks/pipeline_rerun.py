"""Wall time of the offline pipeline, first run vs a re-run with nothing changed (every step reused)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_report

PROJECT_DIR = Path(__file__).resolve().parent.parent


def timed_run(store: Path, cwd: Path) -> float:
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(PROJECT_DIR),
        "--env-manager",
        "local",
        "-P",
        "config=configs/tiny.yaml",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "mlflow.db"
        first = timed_run(store, Path(folder))
        reruns = [timed_run(store, Path(folder)) for _ in range(3)]
    rerun = sorted(reruns)[1]
    result = {"first_run_s": first, "rerun_median_s": rerun, "rerun_over_first": rerun / first}
    table = (
        "| first run (s) | re-run, nothing changed (s, median of 3) | re-run / first |\n|---|---|---|\n"
        f"| {first:.1f} | {rerun:.1f} | {rerun / first:.2f} |"
    )
    write_report("pipeline-rerun", result, table)


if __name__ == "__main__":
    main()
