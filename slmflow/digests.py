"""Content digests of files and folders: what identities and cache keys are made of (never a path)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file below a folder, keyed by relative path."""
    return {str(path.relative_to(folder)): sha256_file(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def tree_digest(folder: Path) -> str:
    """One digest of every file's path and content below a folder."""
    return digest_of(file_digests(folder))


def digest_of(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def lm_eval_data_files(task: Path, task_config: dict[str, Any]) -> dict[str, Path]:
    """The local data files an lm-eval task YAML names (`dataset_kwargs.data_files`, relative to the YAML)."""
    files = (task_config.get("dataset_kwargs") or {}).get("data_files")
    if not isinstance(files, dict):
        return {}
    return {str(split): task.parent / str(name) for split, name in files.items()}


def lm_eval_task_digest(task: Path) -> str:
    """The task YAML and the data files it names: editing an item changes it, moving the folder does not."""
    import yaml

    task_config = yaml.safe_load(task.read_text())
    data = lm_eval_data_files(task, task_config) if isinstance(task_config, dict) else {}
    return digest_of(
        {"task": sha256_file(task)}
        | {f"data/{split}": sha256_file(path) if path.is_file() else "missing" for split, path in data.items()}
    )
