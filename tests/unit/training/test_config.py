"""The `training` section: validated like the rest, its dataset known by content, never by path."""

import json

import pytest
import yaml

from slmflow.config import load_config
from slmflow.errors import ConfigError
from testkit.processes import PROJECT_DIR

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write(folder, training, rows=(ROW,)):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}], "reference": "x"}\n')
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {
        "source": {"model": "builtin:tiny-phi3"},
        "evaluation": {"eval_set": "eval.jsonl"},
        "registry": {"model_name": "m"},
        "training": {"dataset": "train.jsonl", **training},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_the_dataset_relative_to_the_config(tmp_path):
    training = load_config(write(tmp_path, {})).training
    assert training.dataset == tmp_path / "train.jsonl"
    assert (training.method, training.lora.r, training.merge, training.assistant_only_loss) == ("lora", 8, True, True)
    assert training.lora.target_modules is None  # the architecture's default
    assert training.require_improvement_over_base is False  # the base is measured only when asked for
    assert training.budget == {"num_train_epochs": 1.0}
    assert load_config(write(tmp_path, {"max_steps": 30})).training.budget == {"max_steps": 30}


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"lora": {"r": 0}}, r"training\.lora\.r: Input should be greater than or equal to 1"),
        ({"lora": {"rank": 8}}, r"training\.lora\.rank: unknown key"),
        ({"lora": {"target_modules": []}}, r"training\.lora\.target_modules: .*at least 1"),
        ({"method": "full"}, r"training\.method: Input should be 'lora'"),
        ({"epochs": 1, "max_steps": 10}, "give either epochs or max_steps, not both"),
        ({"learning_rate": 0}, r"training\.learning_rate: Input should be greater than 0"),
        ({"held_out_fraction": 1.0}, r"training\.held_out_fraction: Input should be less than 1"),
    ],
)
def test_bad_training_settings_name_the_field(tmp_path, training, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, training))


def test_training_hash_holds_the_dataset_content_not_its_path(tmp_path):
    one = load_config(write(tmp_path / "one", {}))
    two = load_config(write(tmp_path / "two" / "deeper", {}))
    assert one.section_hash("training") == two.section_hash("training")
    changed = load_config(write(tmp_path / "three", {}, rows=(ROW, ROW)))
    assert changed.section_hash("training") != one.section_hash("training")
    assert load_config(write(tmp_path / "four", {"seed": 1})).section_hash("training") != one.section_hash("training")


def test_a_config_without_training_hashes_as_before(tmp_path):
    """Adding the optional section changed no hash of the configs that do not use it."""
    config = load_config(PROJECT_DIR / "configs" / "tiny.yaml")
    assert config.training is None
    assert config.config_hash() == config.section_hash("source", "generation", "runtime", "evaluation", "registry")


def test_shipped_retrain_config_loads_and_its_dataset_exists():
    config = load_config(PROJECT_DIR / "configs" / "tiny-retrain.yaml")
    assert config.training.dataset.is_file()
    assert config.registry.model_name != load_config(PROJECT_DIR / "configs" / "tiny.yaml").registry.model_name


def test_an_unmerged_adapter_is_refused_with_one_line_saying_why_and_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, {"merge": False}))
    [line] = str(refused.value).splitlines()[1:]
    assert line == (
        "  training.merge: false is not supported: the ONNX GenAI builder and both flavors need one ordinary "
        "checkpoint, not a base plus an adapter; leave merge true (the adapter is still logged, as the finetune "
        "run's adapter/ artifact)"
    )
