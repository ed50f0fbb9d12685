"""Fetching a model from its source: a builtin recipe, a local folder, or a hub repo at a pinned revision.

Every source ends as two folders, a Hugging Face checkpoint (for transformers) and an ONNX GenAI
model (for onnxruntime-genai), plus a manifest of what was fetched so a run records it exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmflow.builtin import builtin_spec, ensure_builtin_model, spec_fingerprint
from slmflow.config import BuilderOptions, Settings, SourceConfig
from slmflow.errors import SourceError
from slmflow.onnx_build import build_onnx

# huggingface_hub.snapshot_download's signature; tests pass a fake with the same one.
SnapshotDownloader = Callable[..., str]


@dataclass
class FetchedModel:
    source: str
    revision: str
    checkpoint_dir: Path
    onnx_dir: Path
    onnx_origin: str
    files: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> dict:
        data = asdict(self)
        data["checkpoint_dir"], data["onnx_dir"] = str(self.checkpoint_dir), str(self.onnx_dir)
        return data


def fetch_model(
    source: SourceConfig, settings: Settings, snapshot_download: SnapshotDownloader | None = None
) -> FetchedModel:
    if source.kind == "builtin":
        spec = builtin_spec(source.name)
        checkpoint = ensure_builtin_model(source.name, settings.cache_dir)
        revision = spec_fingerprint(spec)
    elif source.kind == "local":
        checkpoint = Path(source.name)
        if not (checkpoint / "config.json").is_file():
            raise SourceError(f"local model folder {checkpoint} does not exist or has no config.json")
        revision = _tree_digest(checkpoint)
    else:
        checkpoint = _download(source.name, source.revision, list(source.allow_patterns), settings, snapshot_download)
        revision = checkpoint.name  # snapshot folders are named after the resolved commit sha

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
        target = settings.cache_dir / "onnx" / f"{_slug(source)}-{revision[:16]}-{_options_digest(source.builder)}"
        onnx_dir = build_onnx(checkpoint, target, source.builder)
        onnx_origin = f"builder:{source.builder.precision}"

    files = {f"checkpoint/{k}": v for k, v in file_digests(checkpoint).items()}
    files.update({f"onnx/{k}": v for k, v in file_digests(onnx_dir).items()})
    return FetchedModel(
        source=source.model,
        revision=revision,
        checkpoint_dir=checkpoint,
        onnx_dir=onnx_dir,
        onnx_origin=onnx_origin,
        files=files,
    )


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_digest(folder: Path) -> str:
    return hashlib.sha256(json.dumps(file_digests(folder), sort_keys=True).encode()).hexdigest()


def _options_digest(options: BuilderOptions) -> str:
    return hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:8]


def _slug(source: SourceConfig) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in source.name.strip("/"))[-48:]
