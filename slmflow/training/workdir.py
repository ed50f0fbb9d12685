"""Where finetune writes on this machine: one folder per cache key under `<cache>/finetune`, the last few kept.

A re-run with the same key (a job killed after training, or `use_cache=false`) reuses the trained folder
instead of training again; the local cache, like the model builds', only saves work. A new key adds a folder
and the oldest beyond `KEEP` are removed, so a weekly job does not fill the disk. A folder is complete only
with its `result.json`: it is built beside its place and renamed in (`build_once`), so a job killed during
training leaves a staging folder, never a half-trained one that a later run would take.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from slmflow.fetch.cache import build_once
from slmflow.training.trainer import TrainingResult

KEEP = 3  # finetune folders kept per cache: the current one and the two before it
RESULT_FILE = "result.json"
STALE_STAGING_SECONDS = 24 * 3600  # a staging folder this old belongs to a killed job, not a running one
_PATHS = ("checkpoint_dir", "adapter_dir")


def finetune_folder(cache_dir: Path, key: str) -> Path:
    return cache_dir / "finetune" / key[:32]


def save_result(result: TrainingResult, folder: Path) -> None:
    """The result without its paths (they are the folder's `checkpoint/` and `adapter/` wherever it moves)."""
    data = {name: value for name, value in asdict(result).items() if name not in _PATHS}
    (folder / RESULT_FILE).write_text(json.dumps(data))


def load_result(folder: Path) -> TrainingResult:
    data = json.loads((folder / RESULT_FILE).read_text())
    data["history"] = tuple(data["history"])
    return TrainingResult(checkpoint_dir=folder / "checkpoint", adapter_dir=folder / "adapter", **data)


def train_once(folder: Path, train: Callable[[Path], TrainingResult]) -> tuple[TrainingResult, bool]:
    """The folder's training result, training into it first unless a complete one is there; and whether it
    was reused. `train` writes `checkpoint/` and `adapter/` into the folder it is given."""
    reused = (folder / RESULT_FILE).exists()

    def build(output: Path) -> None:
        result = train(output)
        if {result.checkpoint_dir, result.adapter_dir} != {output / "checkpoint", output / "adapter"}:
            raise RuntimeError(f"the fine-tune wrote outside {output}: {result.checkpoint_dir}, {result.adapter_dir}")
        shutil.rmtree(output / "trainer", ignore_errors=True)  # the Trainer's scratch output_dir
        save_result(result, output)

    build_once(folder, RESULT_FILE, build)
    os.utime(folder)  # the most recently used, whatever its age: pruning keeps it
    return load_result(folder), reused


def prune(root: Path, current: Path, keep: int = KEEP, now: float | None = None) -> list[Path]:
    """Remove all but the `keep` most recently used folders under `root` (never `current`), and staging folders
    left by killed jobs; returns what was removed."""
    now = time.time() if now is None else now
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != current]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = folders[max(keep - 1, 0) :]
    removed += [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(".") and now - p.stat().st_mtime > STALE_STAGING_SECONDS
    ]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
