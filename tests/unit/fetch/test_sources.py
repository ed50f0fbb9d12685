import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from slmflow.config import OnnxVariant, SourceConfig
from slmflow.digests import file_digests
from slmflow.errors import SourceError, UnknownBuiltinModelError
from slmflow.fetch.handoff import local_folder, remember_folder
from slmflow.fetch.hub import hub_reference
from slmflow.fetch.sources import FetchedModel, fetch_model, onnx_part, resolve_revision

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
    with pytest.raises(SourceError, match="local model path .*absent does not exist"):
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


class FakeBranches:
    """Answers `branch -> commit` like the hub's model_info, and counts the questions."""

    def __init__(self, heads: dict[str, str]) -> None:
        self.heads, self.calls = heads, []

    def __call__(self, repo, branch, token):
        self.calls.append((repo, branch, token))
        if branch not in self.heads:
            raise KeyError(f"no branch {branch}")
        return self.heads[branch]


def test_a_followed_branch_is_resolved_to_its_commit_and_fetched_there(settings, tiny_checkpoint, tmp_path):
    hub = FakeHub(tmp_path / "hub", {"org/tiny": tiny_checkpoint})
    branches = FakeBranches({"main": SHA})
    source = SourceConfig(model="org/tiny", branch="main")
    assert resolve_revision(source, settings, branches) == SHA
    fetched = fetch_model(source, settings, snapshot_download=hub, resolve_commit=branches)
    assert fetched.revision == SHA and hub.calls[0]["revision"] == SHA
    branches.heads["main"] = "f" * 40  # upstream moved
    assert resolve_revision(source, settings, branches) == "f" * 40


def test_pinned_hub_sources_never_ask_the_hub(settings):
    branches = FakeBranches({})
    assert resolve_revision(SourceConfig(model="org/tiny", revision=SHA), settings, branches) == SHA
    assert branches.calls == []


@pytest.mark.parametrize(
    ("heads", "message"), [({}, "KeyError"), ({"main": "v1.0"}, "resolved to 'v1.0', not a commit")]
)
def test_unresolvable_branch_is_named(settings, heads, message):
    with pytest.raises(SourceError, match=f"branch 'main' of hub repo 'org/tiny'.*{message}"):
        resolve_revision(SourceConfig(model="org/tiny", branch="main"), settings, FakeBranches(heads))


def test_builtin_and_local_revisions_are_their_recipe_and_content(settings, tiny_checkpoint, tmp_path):
    assert resolve_revision(SourceConfig(model="builtin:tiny-phi3"), settings) == tiny_checkpoint.name.split("-")[-1]
    local = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, local)
    before = resolve_revision(SourceConfig(model=f"local:{local}"), settings)
    (local / "model.safetensors").write_bytes(b"retrained")
    assert resolve_revision(SourceConfig(model=f"local:{local}"), settings) != before


def test_a_local_folder_rewritten_after_main_resolved_it_is_refused(settings, tiny_checkpoint, tmp_path):
    local = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, local)
    source = SourceConfig(model=f"local:{local}")
    with pytest.raises(SourceError, match="changed since its revision 0{64} was resolved"):
        fetch_model(source, settings, revision="0" * 64)


def test_handed_over_hub_folders_are_fetched_at_their_commit(settings, tiny_checkpoint, tiny_onnx, tmp_path):
    variant_repo = tmp_path / "onnx-repo"
    shutil.copytree(tiny_onnx, variant_repo / "cpu" / "int4")
    hub = FakeHub(tmp_path / "hub", {"org/tiny": tiny_checkpoint, "org/tiny-onnx": variant_repo})
    checkpoint = local_folder(hub_reference("org/tiny", SHA), settings, "config.json", snapshot_download=hub)
    assert (checkpoint / "config.json").is_file() and hub.calls[-1]["revision"] == SHA
    variant = hub_reference("org/tiny-onnx", SHA, "cpu/int4")
    onnx = local_folder(variant, settings, "genai_config.json", snapshot_download=hub)
    assert (onnx / "genai_config.json").is_file() and hub.calls[-1]["allow_patterns"] == ["cpu/int4/*"]


@pytest.mark.parametrize("reference", ["/abs/path/onnx", "hub:org/tiny@main"])
def test_local_paths_and_unpinned_references_are_refused(settings, reference):
    with pytest.raises(SourceError, match="not a|neither"):
        local_folder(reference, settings, "config.json")


def test_run_artifacts_are_downloaded_once_and_a_remembered_folder_is_read_in_place(
    settings, tiny_onnx, tracking_store, tmp_path
):
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tiny_onnx), "onnx")
    uri = f"runs:/{run.info.run_id}/onnx"
    fresh = settings.model_copy(update={"cache_dir": tmp_path / "empty-cache"})
    downloaded = local_folder(uri, fresh, "genai_config.json")
    assert file_digests(downloaded) == file_digests(tiny_onnx)
    assert local_folder(uri, fresh, "genai_config.json") == downloaded
    remember_folder(uri, tiny_onnx, settings)
    assert local_folder(uri, settings, "genai_config.json").resolve() == tiny_onnx.resolve()


def test_remembering_a_folder_prunes_links_whose_cache_entry_was_cleared(settings, tmp_path):
    isolated = settings.model_copy(update={"cache_dir": tmp_path / "cache"})
    cleared, kept = tmp_path / "cleared-build", tmp_path / "kept-build"
    cleared.mkdir(), kept.mkdir()
    remember_folder("runs:/r1/onnx", cleared, isolated)
    cleared.rmdir()  # the cache entry it pointed to is gone
    remember_folder("runs:/r2/onnx", kept, isolated)
    links = list((isolated.cache_dir / "handoffs").iterdir())
    assert [link.resolve() for link in links] == [kept.resolve()]


def test_a_configured_chat_template_replaces_the_models_own_for_every_source_kind(settings, tiny_checkpoint, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|assistant|>\n")
    local = tmp_path / "my-model"
    shutil.copytree(tiny_checkpoint, local)
    hub = FakeHub(tmp_path / "hub", {"org/tiny": tiny_checkpoint})
    for model, revision in (("builtin:tiny-phi3", None), (f"local:{local}", None), ("org/tiny", SHA)):
        fetched = fetch_model(
            SourceConfig(model=model, revision=revision, chat_template=template), settings, snapshot_download=hub
        )
        assert (fetched.checkpoint_dir / "chat_template.jinja").read_text() == template.read_text(), model
        assert (fetched.onnx_dir / "chat_template.jinja").read_text() == template.read_text(), model
    assert (local / "chat_template.jinja").read_text() != template.read_text()  # the source is left as it was


def test_a_model_without_a_chat_template_needs_one_configured(settings, tiny_checkpoint, tmp_path):
    local = tmp_path / "base-model"
    shutil.copytree(tiny_checkpoint, local)
    (local / "chat_template.jinja").unlink()
    with pytest.raises(SourceError, match=r"has no chat template: set source.chat_template to a Jinja file"):
        fetch_model(SourceConfig(model=f"local:{local}"), settings)


def test_each_variant_counts_by_its_own_onnx_files(tmp_path):
    """A change to one variant's build leaves the others' content, so their logging steps are reused."""
    files = {"checkpoint/config.json": "c", "onnx-int4-b32/model.onnx": "1", "onnx-int4-b16/model.onnx": "2"}
    folders = {"int4-b32": tmp_path / "b32", "int4-b16": tmp_path / "b16"}
    fetched = FetchedModel("builtin:tiny-phi3", "rev", tmp_path, folders, "builder:int4,int4", files)
    rebuilt = replace(fetched, files=files | {"onnx-int4-b16/model.onnx": "3"})
    assert fetched.content(onnx_part("int4-b32")) == rebuilt.content(onnx_part("int4-b32"))
    assert fetched.content(onnx_part("int4-b16")) != rebuilt.content(onnx_part("int4-b16"))
    assert onnx_part("") == "onnx" and fetched.onnx_dir == tmp_path / "b32"
