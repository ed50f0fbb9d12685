"""The local model cache: atomic builds, so readers never see a half-built folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first unless `target/marker` exists.

    `build` writes into a staging folder beside the target, which is renamed into place only when
    complete; if another process finished the same build first, its identical result is kept.
    """
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        output = staging / "output"
        build(output)
        try:
            output.rename(target)
        except OSError:
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
