"""Fetching a model from its source: a builtin recipe, a local folder, or a hub repo at a commit.

Every source ends as two folders, a Hugging Face checkpoint (for transformers) and an ONNX GenAI
model (for onnxruntime-genai), plus a manifest of what was fetched so a run records it exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmflow.config import Settings, SourceConfig
from slmflow.digests import digest_of, file_digests, tree_digest
from slmflow.errors import SourceError
from slmflow.fetch.builtin import builtin_spec, ensure_builtin_model, spec_fingerprint
from slmflow.fetch.hub import SnapshotDownloader, download_snapshot
from slmflow.fetch.onnx_build import build_onnx_cached

# (repo, branch, token) -> the commit sha the branch points at; tests pass a fake hub.
CommitResolver = Callable[[str, str, str | None], str]


@dataclass
class FetchedModel:
    source: str
    revision: str
    checkpoint_dir: Path
    onnx_dir: Path
    onnx_origin: str
    files: dict[str, str] = field(default_factory=dict)

    def content(self, part: str) -> str:
        """Digest of the fetched `checkpoint` or `onnx` files."""
        prefix = part + "/"
        return digest_of({k[len(prefix) :]: v for k, v in self.files.items() if k.startswith(prefix)})

    def manifest(self) -> dict:
        data = asdict(self)
        data["checkpoint_dir"], data["onnx_dir"] = str(self.checkpoint_dir), str(self.onnx_dir)
        return data


def resolve_revision(source: SourceConfig, settings: Settings, resolve_commit: CommitResolver | None = None) -> str:
    """What the source is, without fetching it: a builtin's recipe, a local folder's digest, a hub commit.

    A followed hub branch is resolved to the commit it points at now, so a cache keyed on the
    revision redoes nothing while upstream has not moved.
    """
    if source.kind == "builtin":
        return spec_fingerprint(builtin_spec(source.name))
    if source.kind == "local":
        return tree_digest(_local_checkpoint(source))
    if source.branch is None:
        return source.revision
    resolve_commit = resolve_commit or _hub_commit
    try:
        commit = resolve_commit(source.name, source.branch, settings.hf_token)
    except Exception as error:  # the hub client raises many types; all mean "not resolved"
        raise SourceError(
            f"cannot resolve branch '{source.branch}' of hub repo '{source.name}': {type(error).__name__}: {error}"
        ) from error
    if not re.fullmatch(r"[0-9a-f]{40}", commit or ""):
        raise SourceError(f"branch '{source.branch}' of hub repo '{source.name}' resolved to '{commit}', not a commit")
    return commit


def _hub_commit(repo: str, branch: str, token: str | None) -> str:
    from huggingface_hub import HfApi

    return HfApi().model_info(repo, revision=branch, token=token).sha


def fetch_model(
    source: SourceConfig,
    settings: Settings,
    revision: str | None = None,
    snapshot_download: SnapshotDownloader | None = None,
    resolve_commit: CommitResolver | None = None,
) -> FetchedModel:
    """Fetch the source at `revision` (what `main` resolved; resolved here when None)."""
    resolved = resolve_revision(source, settings, resolve_commit) if revision is None else revision
    if source.kind == "builtin":
        checkpoint = ensure_builtin_model(source.name, settings.cache_dir)
    elif source.kind == "local":
        checkpoint = _local_checkpoint(source)
    else:
        checkpoint = download_snapshot(source.name, resolved, list(source.allow_patterns), settings, snapshot_download)
    checkpoint_files = file_digests(checkpoint)
    if source.kind == "local" and digest_of(checkpoint_files) != resolved:
        raise SourceError(
            f"local model folder {checkpoint} changed since its revision {resolved} was resolved "
            "(rewritten during the run?): run the pipeline again"
        )

    if source.onnx is not None:
        variant = source.onnx
        snapshot = download_snapshot(
            variant.repo,
            variant.revision,
            [f"{variant.subfolder}/*" if variant.subfolder else "*"],
            settings,
            snapshot_download,
        )
        onnx_dir = snapshot / variant.subfolder
        onnx_origin = f"{variant.repo}@{snapshot.name}/{variant.subfolder}"
        if not (onnx_dir / "genai_config.json").is_file():
            raise SourceError(f"ONNX variant {variant.repo}/{variant.subfolder} has no genai_config.json")
    else:
        onnx_dir = build_onnx_cached(checkpoint, digest_of(checkpoint_files), settings.cache_dir, source.builder)
        onnx_origin = f"builder:{source.builder.precision}"

    files = {f"checkpoint/{k}": v for k, v in checkpoint_files.items()}
    files.update({f"onnx/{k}": v for k, v in file_digests(onnx_dir).items()})
    return FetchedModel(
        source=source.model,
        revision=resolved,
        checkpoint_dir=checkpoint,
        onnx_dir=onnx_dir,
        onnx_origin=onnx_origin,
        files=files,
    )


def _local_checkpoint(source: SourceConfig) -> Path:
    checkpoint = Path(source.name)
    if not (checkpoint / "config.json").is_file():
        raise SourceError(f"local model folder {checkpoint} does not exist or has no config.json")
    return checkpoint


def _slug(source: SourceConfig) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in source.name.strip("/"))[-48:]
