"""The local model cache: atomic builds, so readers never see a half-built folder, and one build at a time."""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def build_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first unless `target/marker` exists.

    `build` writes into a staging folder beside the target, which is renamed into place only when
    complete. Processes sharing the cache (two jobs on one host, parallel test workers) take turns:
    the second waits for the first and keeps its result, rather than repeating a build that can take hours.
    """
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if (target / marker).exists():  # built by the process we waited for
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            output = staging / "output"
            build(output)
            output.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """An advisory lock held until the block ends; the kernel releases it if the process dies."""
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
