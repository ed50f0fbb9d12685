from pathlib import Path

import pytest
import yaml

from slmflow.config import Settings, load_config
from slmflow.errors import ConfigError
from testkit.processes import PROJECT_DIR

SHIPPED_CONFIGS = [
    "tiny.yaml",
    "phi3-mini-4k-instruct.yaml",
    "smollm2-135m-instruct.yaml",
    "tiny-retrain.yaml",
    "smollm2-135m-instruct-retrain.yaml",
]


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_load_and_their_eval_items_resolve_their_margins(name):
    from slmflow.evaluation.dataset import load_examples
    from slmflow.registry.rules import margin_problems

    config = load_config(PROJECT_DIR / "configs" / name)
    assert margin_problems(config, len(load_examples(config.evaluation))) == []
    assert config.source.trust_remote_code is False


def test_eval_items_come_from_one_place_and_a_split_part_must_exist(tmp_path):
    base = {"source": {"model": "builtin:tiny-phi3"}, "registry": {"model_name": "m"}}
    both = {**base, "evaluation": {"eval_set": "eval.jsonl", "suite": {"skills": {"facts": None}}}}
    with pytest.raises(ConfigError, match="give either eval_set .* or suite, not both or neither"):
        load_config(write(tmp_path, both))
    split = {**base, "evaluation": {"suite": {"skills": {"facts": None}}, "split": {"parts": 2, "part": 2}}}
    with pytest.raises(ConfigError, match="split.part: 2 is not one of the 2 parts"):
        load_config(write(tmp_path, split))
    unknown = {**base, "evaluation": {"suite": {"skills": {"poetry": 10}}}}
    with pytest.raises(ConfigError, match="evaluation.suite.skills.poetry"):
        load_config(write(tmp_path, unknown))


def test_default_config_pins_a_full_commit_of_phi3():
    source = load_config(PROJECT_DIR / "configs" / "phi3-mini-4k-instruct.yaml").source
    assert source.kind == "hub"
    assert source.name == "microsoft/Phi-3-mini-4k-instruct"
    assert len(source.revision) == 40


def write(tmp_path, data) -> Path:
    (tmp_path / "eval.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}], "reference": "x"}\n')
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal(**overrides):
    data = {
        "source": {"model": "builtin:tiny-phi3"},
        "evaluation": {"eval_set": "eval.jsonl"},
        "registry": {"model_name": "m"},
    }
    data.update(overrides)
    return data


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    config = load_config(write(tmp_path, minimal(source={"model": "local:ckpt"})))
    assert config.evaluation.eval_set == tmp_path / "eval.jsonl"
    assert config.source.name == str(tmp_path / "ckpt")


def test_unknown_key_is_named(tmp_path):
    data = minimal(generation={"max_new_tokens": 8, "temprature": 0.5})
    with pytest.raises(ConfigError, match=r"generation\.temprature: unknown key"):
        load_config(write(tmp_path, data))


def test_unknown_top_level_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"registyr: unknown key"):
        load_config(write(tmp_path, {**minimal(), "registyr": {}}))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_bad_value_names_key_and_constraint(tmp_path):
    with pytest.raises(ConfigError, match=r"generation\.top_p: Input should be less than or equal to 1"):
        load_config(write(tmp_path, minimal(generation={"top_p": 1.5})))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"model": "microsoft/Phi-3-mini-4k-instruct"}, "must be pinned to a revision"),
        ({"model": "microsoft/Phi-3-mini-4k-instruct", "revision": "main"}, "40-hex commit sha"),
        ({"model": "phi3", "revision": "a" * 40}, "neither 'builtin:NAME'"),
    ],
)
def test_hub_sources_must_be_pinned_repo_ids(tmp_path, source, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, minimal(source=source)))


def test_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_section_hash_changes_only_with_its_sections(tmp_path):
    base = load_config(write(tmp_path, minimal()))
    changed = load_config(write(tmp_path, minimal(generation={"max_new_tokens": 9})))
    assert base.section_hash("source") == changed.section_hash("source")
    assert base.section_hash("generation") != changed.section_hash("generation")
    assert base.section_hash("generation.temperature") == changed.section_hash("generation.temperature")
    assert base.config_hash() != changed.config_hash()


def test_config_hash_is_the_same_from_any_checkout(tmp_path):
    """Paths count by what they hold: the eval set by its digest, a local model folder not at all."""
    hashes = []
    for checkout in ("one", "two/deeper"):
        folder = tmp_path / checkout
        folder.mkdir(parents=True)
        hashes.append(load_config(write(folder, minimal(source={"model": f"local:{folder}/model"}))).config_hash())
    assert hashes[0] == hashes[1]
    (folder / "eval.jsonl").write_text("[]\n")
    assert load_config(folder / "config.yaml").config_hash() != hashes[0]


def test_every_shipped_config_builds_int4_at_block_32():
    for path in sorted((PROJECT_DIR / "configs").glob("*.yaml")):
        assert [v.block_size for v in load_config(path).source.variants] == [32], path.name


@pytest.mark.parametrize("kind", ["builtin:tiny-phi3", "local:model.gguf", "org/name"])
def test_a_chat_template_file_resolves_beside_the_config_and_counts_by_content(tmp_path, kind):
    source = {"model": kind, "chat_template": "templates/chat.jinja"}
    if kind == "org/name":
        source["revision"] = "a" * 40
    hashes = []
    for checkout in ("one", "two/deeper"):
        folder = tmp_path / checkout
        (folder / "templates").mkdir(parents=True)
        (folder / "templates" / "chat.jinja").write_text("{{ messages[0]['content'] }}")
        config = load_config(write(folder, minimal(source=source)))
        assert config.source.chat_template == folder / "templates" / "chat.jinja"
        hashes.append(config.section_hash("source"))
    assert hashes[0] == hashes[1]
    (folder / "templates" / "chat.jinja").write_text("{{ messages[-1]['content'] }}")
    assert load_config(folder / "config.yaml").section_hash("source") != hashes[0]


def test_a_missing_chat_template_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^source.chat_template: file not found: .*absent.jinja$"):
        load_config(write(tmp_path, minimal(source={"model": "builtin:tiny-phi3", "chat_template": "absent.jinja"})))


def test_missing_eval_set_is_named_when_hashed(tmp_path):
    config = load_config(write(tmp_path, minimal()))
    (tmp_path / "eval.jsonl").unlink()
    with pytest.raises(ConfigError, match="evaluation.eval_set: file not found: .*eval.jsonl"):
        config.config_hash()


def test_branch_tracking_is_for_hub_sources_without_a_pin(tmp_path):
    followed = load_config(write(tmp_path, minimal(source={"model": "org/m", "branch": "main"})))
    assert followed.source.branch == "main" and followed.source.revision is None
    for source, message in [
        ({"model": "org/m", "branch": "main", "revision": "a" * 40}, "either a pinned revision or a branch"),
        ({"model": "builtin:tiny-phi3", "branch": "main"}, "only hub repos follow a branch"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(write(tmp_path, minimal(source=source)))


def test_settings_read_the_environment_and_hide_the_token(monkeypatch, tmp_path):
    monkeypatch.setenv("SLMFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings.from_environment()
    assert settings.cache_dir == tmp_path
    assert settings.hf_token == "hf_secret"
    assert settings.hf_offline
    assert "hf_secret" not in repr(settings)


def builders(tmp_path, builder, **source):
    return load_config(write(tmp_path, minimal(source={"model": "builtin:tiny-phi3", "builder": builder, **source})))


def test_one_builder_mapping_is_the_single_variant_with_todays_names(tmp_path):
    source = builders(tmp_path, {"block_size": 128}).source
    assert [v.block_size for v in source.variants] == [128]
    assert list(source.variant_labels) == [""]  # onnx_uri, onnx-chat: as before variants existed


def test_a_list_of_builder_mappings_names_each_variant_from_its_options(tmp_path):
    source = builders(
        tmp_path,
        [{"block_size": 32}, {"block_size": 128}, {"block_size": 32, "accuracy_level": 1}, {"precision": "fp32"}],
    ).source
    assert list(source.variant_labels) == ["int4-b32", "int4-b128", "int4-b32-a1", "fp32"]
    named = builders(tmp_path, [{"block_size": 32, "name": "small-blocks"}, {"block_size": 64}]).source
    assert list(named.variant_labels) == ["small-blocks", "int4-b64"]
    assert list(builders(tmp_path, [{"block_size": 64}]).source.variant_labels) == [""]  # one of them: one variant


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        ([], r"source: source\.builder: the list of variants is empty"),
        ([{"block_size": 32}, {"block_size": 32}], r"source\.builder: variant names must differ, int4-b32 is repeated"),
        ([{"precision": "fp32"}, {"block_size": 16, "name": "fp32"}], r"fp32 is repeated \(set `name` on one\)"),
        ([{"block_size": 32}, {"block_size": 8}], r"\n  source\.builder\.1\.block_size: Input should be greater"),
        ({"block_size": 8}, r"\n  source\.builder\.block_size: Input should be greater than or equal to 16$"),
        ([{"name": "Has Space"}], r"source\.builder\.0\.name: String should match pattern"),
        ("int4", r"\n  source\.builder: Input should be a valid dictionary"),
    ],
)
def test_bad_variants_are_named_in_one_line(tmp_path, builder, message):
    with pytest.raises(ConfigError, match=message) as raised:
        builders(tmp_path, builder)
    assert len(str(raised.value).splitlines()) == 2  # the file, then one line naming the field


def test_several_variants_are_refused_with_a_prebuilt_onnx_or_with_training(tmp_path):
    prebuilt = {"repo": "org/onnx", "revision": "a" * 40}
    with pytest.raises(ConfigError, match="not taken from source.onnx"):
        builders(tmp_path, [{"block_size": 32}, {"block_size": 16}], onnx=prebuilt)
    training = minimal(
        source={"model": "builtin:tiny-phi3", "builder": [{"block_size": 32}, {"block_size": 16}]},
        training={"dataset": "train.jsonl", "max_steps": 1},
    )
    with pytest.raises(ConfigError, match="training builds one variant"):
        load_config(write(tmp_path, training))


def test_a_change_to_the_variants_changes_the_source_hash(tmp_path):
    one = builders(tmp_path, [{"block_size": 32}, {"block_size": 16}]).section_hash("source.builder")
    other = builders(tmp_path, [{"block_size": 32}, {"block_size": 64}]).section_hash("source.builder")
    assert one != other
