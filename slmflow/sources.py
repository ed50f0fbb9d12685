"""Fetching a model from its source: a builtin recipe, a local folder, or a hub repo at a commit.

Every source ends as two folders, a Hugging Face checkpoint (for transformers) and an ONNX GenAI
model (for onnxruntime-genai), plus a manifest of what was fetched so a run records it exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmflow.builtin import builtin_spec, ensure_builtin_model, spec_fingerprint
from slmflow.cache import build_once, sha256_file
from slmflow.config import BuilderOptions, Settings, SourceConfig
from slmflow.errors import SourceError
from slmflow.onnx_build import build_onnx

# huggingface_hub.snapshot_download's signature; tests pass a fake with the same one.
SnapshotDownloader = Callable[..., str]
# (repo, branch, token) -> the commit sha the branch points at; tests pass a fake hub.
CommitResolver = Callable[[str, str, str | None], str]
HUB_PREFIX = "hub:"


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
        return _digest_of({k[len(prefix) :]: v for k, v in self.files.items() if k.startswith(prefix)})

    def manifest(self) -> dict:
        data = asdict(self)
        data["checkpoint_dir"], data["onnx_dir"] = str(self.checkpoint_dir), str(self.onnx_dir)
        return data


def resolve_revision(
    source: SourceConfig, settings: Settings, resolve_commit: CommitResolver | None = None
) -> str:
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
        checkpoint = _download(source.name, resolved, list(source.allow_patterns), settings, snapshot_download)
    checkpoint_files = file_digests(checkpoint)
    if source.kind == "local" and _digest_of(checkpoint_files) != resolved:
        raise SourceError(
            f"local model folder {checkpoint} changed since its revision {resolved} was resolved "
            "(rewritten during the run?): run the pipeline again"
        )

    if source.onnx is not None:
        variant = source.onnx
        snapshot = _download(
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
        # Keyed by the checkpoint's content: the same weights from any source or path build once.
        content = _digest_of(checkpoint_files)[:24]
        target = settings.cache_dir / "onnx" / f"{content}-{_options_digest(source.builder)}"
        onnx_dir = build_onnx(checkpoint, target, source.builder)
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


def hub_reference(repo: str, commit: str, subfolder: str = "") -> str:
    """A pinned hub folder, handed between steps instead of a local path: hub:org/name@commit[/subfolder]."""
    return f"{HUB_PREFIX}{repo}@{commit}" + (f"/{subfolder}" if subfolder else "")


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
        return _download(repo, commit, patterns, settings, snapshot_download) / (subfolder or "")
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


def _download(
    repo: str,
    revision: str | None,
    allow_patterns: list[str],
    settings: Settings,
    snapshot_download: SnapshotDownloader | None,
) -> Path:
    if snapshot_download is None:
        from huggingface_hub import snapshot_download
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


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file below a folder, keyed by relative path."""
    return {str(path.relative_to(folder)): sha256_file(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def tree_digest(folder: Path) -> str:
    """One digest of every file's path and content below a folder."""
    return _digest_of(file_digests(folder))


def _digest_of(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _options_digest(options: BuilderOptions) -> str:
    return hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:8]


def _slug(source: SourceConfig) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in source.name.strip("/"))[-48:]
