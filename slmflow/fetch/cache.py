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
    lock_file = target.parent / f".{target.name}.lock"
    with _exclusive(lock_file):
        if (target / marker).exists():  # built by the process we waited for
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            output = staging / "output"
            build(output)
            try:
                output.rename(target)
            except OSError:  # a process that locked a removed lock file's successor built it meanwhile
                if not (target / marker).exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            lock_file.unlink(missing_ok=True)  # a failed build leaves nothing; waiters still hold its lock
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
