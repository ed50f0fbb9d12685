"""Folders handed from one step to the next by URI: downloaded once per machine, cached by the reference."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from slmflow.config import Settings
from slmflow.errors import SourceError
from slmflow.fetch.cache import build_once
from slmflow.fetch.hub import HUB_PREFIX, SnapshotDownloader, download_snapshot


def local_folder(
    reference: str,
    settings: Settings,
    marker: str,
    allow_patterns: tuple[str, ...] = ("*",),
    snapshot_download: SnapshotDownloader | None = None,
) -> Path:
    """A local copy of a folder another step handed over (a runs:/ artifact URI or a pinned hub reference).

    Copies are cached by the reference, which names immutable content, so a step on the machine
    that made the folder, or one that fetched it before, reads it without a download.
    """
    if reference.startswith(HUB_PREFIX):
        match = re.fullmatch(r"([^@]+)@([0-9a-f]{40})(?:/(.+))?", reference[len(HUB_PREFIX) :])
        if match is None:
            raise SourceError(f"'{reference}' is not a pinned hub reference hub:org/name@<40-hex commit>[/subfolder]")
        repo, commit, subfolder = match.groups()
        patterns = [f"{subfolder}/*"] if subfolder else list(allow_patterns)
        return download_snapshot(repo, commit, patterns, settings, snapshot_download) / (subfolder or "")
    if not reference.startswith("runs:/"):
        raise SourceError(f"'{reference}' is neither a runs:/ artifact URI nor a pinned hub:org/name@commit reference")
    target = _handoff_path(reference, settings)
    if target.is_dir():
        return target.resolve()  # where a remembered folder really is: MLflow refuses to copy through links
    if target.is_symlink():
        target.unlink(missing_ok=True)  # it pointed into a cache that has been cleared since
    return build_once(target, marker, lambda output: _download_artifacts(reference, output))


def remember_folder(reference: str, folder: Path, settings: Settings) -> None:
    """Let later steps on this machine read `folder` for `reference` instead of downloading it."""
    target = _handoff_path(reference, settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    link = target.with_name(f".{target.name}-{os.getpid()}")
    link.unlink(missing_ok=True)
    link.symlink_to(folder.resolve(), target_is_directory=True)
    os.replace(link, target)
    _prune_dangling_links(target.parent)


def _prune_dangling_links(handoffs: Path) -> None:
    """Drop remembered folders whose cache entry has since been cleared (their link leads nowhere)."""
    for entry in handoffs.iterdir():
        if entry.is_symlink() and not entry.exists():
            entry.unlink(missing_ok=True)  # another step may have replaced or removed it meanwhile


def _handoff_path(reference: str, settings: Settings) -> Path:
    return settings.cache_dir / "handoffs" / hashlib.sha256(reference.encode()).hexdigest()[:32]


def _download_artifacts(reference: str, output: Path) -> None:
    import mlflow

    staging = output.with_name(output.name + "-download")
    staging.mkdir()
    try:
        downloaded = mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(staging))
    except Exception as error:  # MLflow raises several types; all mean "not there"
        raise SourceError(f"cannot download {reference}: {type(error).__name__}: {error}") from error
    Path(downloaded).rename(output)
