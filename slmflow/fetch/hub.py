"""The Hugging Face hub, pinned: snapshots at a commit, and the `hub:org/name@commit` references steps hand on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from slmflow.config import Settings
from slmflow.errors import SourceError

# huggingface_hub.snapshot_download's signature; tests pass a fake with the same one.
SnapshotDownloader = Callable[..., str]
HUB_PREFIX = "hub:"


def hub_reference(repo: str, commit: str, subfolder: str = "") -> str:
    """A pinned hub folder, handed between steps instead of a local path: hub:org/name@commit[/subfolder]."""
    return f"{HUB_PREFIX}{repo}@{commit}" + (f"/{subfolder}" if subfolder else "")


def download_snapshot(
    repo: str,
    revision: str | None,
    allow_patterns: list[str],
    settings: Settings,
    snapshot_download: SnapshotDownloader | None,
) -> Path:
    if snapshot_download is None:
        from huggingface_hub import snapshot_download as hub_snapshot_download

        snapshot_download = hub_snapshot_download
    try:
        path = snapshot_download(
            repo_id=repo,
            revision=revision,
            allow_patterns=allow_patterns,
            cache_dir=str(settings.cache_dir / "hub"),
            token=settings.hf_token,
        )
    except Exception as error:  # the hub client raises many types; all mean "not fetched"
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if settings.hf_offline else ""
        raise SourceError(
            f"cannot fetch hub repo '{repo}' at revision '{revision}'{hint}: {type(error).__name__}: {error}"
        ) from error
    return Path(path)
