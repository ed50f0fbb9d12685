import shutil
from pathlib import Path

import pytest

from slmflow.config import OnnxVariant, SourceConfig
from slmflow.errors import SourceError, UnknownBuiltinModelError
from slmflow.sources import fetch_model

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves snapshots from local folders the way huggingface_hub.snapshot_download lays them out."""

    def __init__(self, root: Path, repos: dict[str, Path]) -> None:
        self.root, self.repos, self.calls = root, repos, []

    def __call__(self, repo_id, revision, allow_patterns, cache_dir, token):
        self.calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns, "token": token})
        snapshot = self.root / repo_id.replace("/", "--") / "snapshots" / revision
        if not snapshot.exists():
            shutil.copytree(self.repos[repo_id], snapshot)
        return str(snapshot)


def test_builtin_source(settings, tiny_checkpoint):
    fetched = fetch_model(SourceConfig(model="builtin:tiny-phi3"), settings)
    assert fetched.checkpoint_dir == tiny_checkpoint
    assert (fetched.onnx_dir / "genai_config.json").exists()
    assert fetched.onnx_origin == "builder:int4"
    assert "checkpoint/model.safetensors" in fetched.files
    assert all(len(digest) == 64 for digest in fetched.files.values())


def test_unknown_builtin(settings):
    with pytest.raises(UnknownBuiltinModelError, match="builtin:nope"):
        fetch_model(SourceConfig(model="builtin:nope"), settings)


def test_local_folder_source(settings, tiny_checkpoint, tmp_path):
    local = tmp_path / "my-model"
    shutil.copytree(tiny_checkpoint, local)
    fetched = fetch_model(SourceConfig(model=f"local:{local}"), settings)
    assert fetched.checkpoint_dir == local
    assert len(fetched.revision) == 64


def test_missing_local_folder(settings, tmp_path):
    with pytest.raises(SourceError, match="local model folder .*absent does not exist"):
        fetch_model(SourceConfig(model=f"local:{tmp_path / 'absent'}"), settings)


def test_hub_source_downloads_the_pinned_revision_with_only_needed_files(
    settings, tiny_checkpoint, tiny_onnx, tmp_path
):
    variant_repo = tmp_path / "onnx-repo"
    shutil.copytree(tiny_onnx, variant_repo / "cpu" / "int4")
    hub = FakeHub(tmp_path / "hub", {"org/tiny": tiny_checkpoint, "org/tiny-onnx": variant_repo})
    source = SourceConfig(
        model="org/tiny",
        revision=SHA,
        onnx=OnnxVariant(repo="org/tiny-onnx", revision=SHA, subfolder="cpu/int4"),
    )
    fetched = fetch_model(source, settings, snapshot_download=hub)
    assert fetched.revision == SHA
    assert fetched.onnx_dir.name == "int4" and (fetched.onnx_dir / "genai_config.json").exists()
    assert fetched.onnx_origin == f"org/tiny-onnx@{SHA}/cpu/int4"
    assert hub.calls[0]["revision"] == SHA and "*.safetensors" in hub.calls[0]["allow_patterns"]
    assert hub.calls[1]["allow_patterns"] == ["cpu/int4/*"]


def test_hub_source_without_variant_builds_onnx(settings, tiny_checkpoint, tmp_path):
    hub = FakeHub(tmp_path / "hub", {"org/tiny": tiny_checkpoint})
    fetched = fetch_model(SourceConfig(model="org/tiny", revision=SHA), settings, snapshot_download=hub)
    assert fetched.onnx_origin == "builder:int4"
    assert (fetched.onnx_dir / "model.onnx").exists()


def test_variant_without_genai_config_is_refused(settings, tiny_checkpoint, tmp_path):
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    hub = FakeHub(tmp_path / "hub", {"org/tiny": tiny_checkpoint, "org/empty": empty})
    source = SourceConfig(model="org/tiny", revision=SHA, onnx=OnnxVariant(repo="org/empty", revision=SHA))
    with pytest.raises(SourceError, match="no genai_config.json"):
        fetch_model(source, settings, snapshot_download=hub)


def test_unreachable_hub_fails_at_once_naming_repo_and_revision(settings):
    """The real huggingface_hub client, offline: a clear error, not a hang."""
    with pytest.raises(
        SourceError, match=rf"cannot fetch hub repo 'microsoft/Phi-3-mini-4k-instruct' at revision '{SHA}'"
    ):
        fetch_model(SourceConfig(model="microsoft/Phi-3-mini-4k-instruct", revision=SHA), settings)


def test_token_is_passed_to_the_hub_client(tiny_checkpoint, tmp_path, settings):
    hub = FakeHub(tmp_path / "hub", {"org/tiny": tiny_checkpoint})
    with_token = settings.model_copy(update={"hf_token": "hf_abc"})
    fetch_model(SourceConfig(model="org/tiny", revision=SHA), with_token, snapshot_download=hub)
    assert hub.calls[0]["token"] == "hf_abc"
