"""Fetching a model from its source: a builtin recipe, a local folder or GGUF file, or a hub repo at a commit.

Every source ends as two folders, a Hugging Face checkpoint (for transformers) and an ONNX GenAI
model (for onnxruntime-genai), plus a manifest of what was fetched so a run records it exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmflow.config import Settings, SourceConfig
from slmflow.digests import digest_of, file_digests, sha256_file, tree_digest
from slmflow.errors import SourceError, UnknownBuiltinModelError
from slmflow.fetch.builtin import BUILTIN_MODELS, ensure_builtin_model, spec_fingerprint
from slmflow.fetch.cache import build_once
from slmflow.fetch.gguf import GGUF_SUFFIX, check_loadable, dequantized_checkpoint, read_gguf_info
from slmflow.fetch.hub import SnapshotDownloader, download_snapshot
from slmflow.fetch.onnx_build import build_onnx_cached
from slmflow.fetch.packaged import PACKAGED_MODELS
from slmflow.fetch.wheels import packaged_file
from slmflow.templates import copy_with_template, read_chat_template

# (repo, branch, token) -> the commit sha the branch points at; tests pass a fake hub.
CommitResolver = Callable[[str, str, str | None], str | None]


@dataclass
class FetchedModel:
    source: str
    revision: str
    checkpoint_dir: Path
    onnx_dirs: dict[str, Path]  # by variant label (`SourceConfig.variant_labels`): "" for the single variant
    onnx_origin: str
    files: dict[str, str] = field(default_factory=dict)
    gguf: dict | None = None  # sha256, architecture and quantization of a GGUF source

    @property
    def onnx_dir(self) -> Path:
        """The ONNX folder of the first (usually the only) variant."""
        return next(iter(self.onnx_dirs.values()))

    def content(self, part: str) -> str:
        """Digest of the fetched `checkpoint` files or of one variant's ONNX files (`onnx_part(label)`)."""
        prefix = part + "/"
        return digest_of({k[len(prefix) :]: v for k, v in self.files.items() if k.startswith(prefix)})

    def manifest(self) -> dict:
        data = asdict(self)
        data["checkpoint_dir"] = str(self.checkpoint_dir)
        data["onnx_dirs"] = {label: str(folder) for label, folder in self.onnx_dirs.items()}
        return data


def onnx_part(label: str) -> str:
    """Where a variant's ONNX files are among the fetched files and the run's artifacts: `onnx`, `onnx-int4-b32`."""
    return f"onnx-{label}" if label else "onnx"


def resolve_revision(source: SourceConfig, settings: Settings, resolve_commit: CommitResolver | None = None) -> str:
    """What the source is, without fetching it: a builtin's recipe, a local folder's digest or a GGUF file's
    sha256, a hub commit.

    A followed hub branch is resolved to the commit it points at now, so a cache keyed on the
    revision redoes nothing while upstream has not moved.
    """
    if source.kind == "builtin":
        return _builtin_revision(source.name)
    if source.kind == "local":
        path = _local_path(source)
        return sha256_file(path) if path.is_file() else tree_digest(path)
    if source.branch is None:
        assert source.revision is not None  # SourceConfig pins every hub model that follows no branch
        return source.revision
    resolve_commit = resolve_commit or _hub_commit
    try:
        commit = resolve_commit(source.name, source.branch, settings.hf_token)
    except Exception as error:  # the hub client raises many types; all mean "not resolved"
        raise SourceError(
            f"cannot resolve branch '{source.branch}' of hub repo '{source.name}': {type(error).__name__}: {error}"
        ) from error
    if commit is None or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise SourceError(f"branch '{source.branch}' of hub repo '{source.name}' resolved to '{commit}', not a commit")
    return commit


def _hub_commit(repo: str, branch: str, token: str | None) -> str | None:
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
    gguf_file, gguf = None, None
    if source.kind == "builtin" and source.name in PACKAGED_MODELS:
        gguf_file = packaged_file(PACKAGED_MODELS[source.name], settings.cache_dir)
    elif source.kind == "builtin":
        checkpoint = ensure_builtin_model(source.name, settings.cache_dir)
    elif source.kind == "local" and _local_path(source).is_file():
        gguf_file = _local_path(source)
        _check_unchanged(gguf_file, sha256_file(gguf_file), resolved)
    elif source.kind == "local":
        checkpoint = _local_path(source)
        _check_unchanged(checkpoint, tree_digest(checkpoint), resolved)
    else:
        checkpoint = download_snapshot(source.name, resolved, list(source.allow_patterns), settings, snapshot_download)
    if gguf_file is not None:
        checkpoint, gguf = _from_gguf(gguf_file, source, settings)
    checkpoint = _with_chat_template(checkpoint, source, settings)
    checkpoint_files = file_digests(checkpoint)

    if source.onnx is not None:
        variant = source.onnx
        snapshot = download_snapshot(
            variant.repo,
            variant.revision,
            [f"{variant.subfolder}/*" if variant.subfolder else "*"],
            settings,
            snapshot_download,
        )
        onnx_dirs = {"": snapshot / variant.subfolder}
        onnx_origin = f"{variant.repo}@{snapshot.name}/{variant.subfolder}"
        if not (onnx_dirs[""] / "genai_config.json").is_file():
            raise SourceError(f"ONNX variant {variant.repo}/{variant.subfolder} has no genai_config.json")
    else:
        # Each variant is cached by the checkpoint's content and its own options: changing one builds only it.
        content = digest_of(checkpoint_files)
        onnx_dirs = {
            label: build_onnx_cached(checkpoint, content, settings.cache_dir, options)
            for label, options in source.variant_labels.items()
        }
        onnx_origin = "builder:" + ",".join(options.precision for options in source.variants)

    files = {f"checkpoint/{k}": v for k, v in checkpoint_files.items()}
    for label, onnx_dir in onnx_dirs.items():
        files.update({f"{onnx_part(label)}/{k}": v for k, v in file_digests(onnx_dir).items()})
    return FetchedModel(
        source=source.model,
        revision=resolved,
        checkpoint_dir=checkpoint,
        onnx_dirs=onnx_dirs,
        onnx_origin=onnx_origin,
        files=files,
        gguf=gguf,
    )


def _builtin_revision(name: str) -> str:
    if name in PACKAGED_MODELS:
        return PACKAGED_MODELS[name].sha256
    if name in BUILTIN_MODELS:
        return spec_fingerprint(BUILTIN_MODELS[name])
    known = ", ".join(sorted([*BUILTIN_MODELS, *PACKAGED_MODELS]))
    raise UnknownBuiltinModelError(f"unknown builtin model 'builtin:{name}' (known: {known})")


def _local_path(source: SourceConfig) -> Path:
    """A local source is a checkpoint folder or a .gguf file; anything else is refused here."""
    path = Path(source.name)
    if path.is_file() and path.suffix == GGUF_SUFFIX:
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"local model folder {path} has no config.json")
        return path
    if path.exists():
        raise SourceError(f"local model path {path} is neither a folder nor a {GGUF_SUFFIX} file")
    raise SourceError(f"local model path {path} does not exist")


def _check_unchanged(path: Path, digest: str, resolved: str) -> None:
    if digest != resolved:
        raise SourceError(
            f"local model {path} changed since its revision {resolved} was resolved "
            "(rewritten during the run?): run the pipeline again"
        )


def _from_gguf(path: Path, source: SourceConfig, settings: Settings) -> tuple[Path, dict]:
    """Check the GGUF's header (loadable, has or is given a chat template), then dequantize it once."""
    info = read_gguf_info(path)
    check_loadable(path, info)
    if info.chat_template is None and source.chat_template is None:
        raise SourceError(
            f"GGUF file {path} has no chat template (a base model?): "
            "set source.chat_template to a Jinja file beside the config"
        )
    sha256 = sha256_file(path)
    return dequantized_checkpoint(path, sha256, source.gguf_dtype, settings.cache_dir), info.manifest(sha256)


def _with_chat_template(checkpoint: Path, source: SourceConfig, settings: Settings) -> Path:
    """The checkpoint with the configured chat template (a linked copy in the cache), or as it is."""
    if source.chat_template is None:
        if read_chat_template(checkpoint) is None:
            raise SourceError(
                f"model {source.model} has no chat template: set source.chat_template to a Jinja file beside the config"
            )
        return checkpoint
    template = source.chat_template.read_text()
    key = digest_of({"checkpoint": tree_digest(checkpoint), "template": sha256_file(source.chat_template)})
    target = settings.cache_dir / "templated" / key[:24]
    return build_once(target, "config.json", lambda output: copy_with_template(checkpoint, template, output))
