import pytest

from slmflow.errors import ConfigError
from slmflow.evaluation.dataset import eval_dataset, load_eval_set
from testkit.processes import PROJECT_DIR


def test_shipped_eval_sets_load():
    capitals = load_eval_set(PROJECT_DIR / "configs" / "eval" / "capitals.jsonl")
    assert len(capitals) >= 20
    assert capitals[0].answer in capitals[0].reference
    assert capitals[0].question == capitals[0].messages[-1]["content"]
    assert len(load_eval_set(PROJECT_DIR / "configs" / "eval" / "general-qa.jsonl", max_examples=5)) == 5


def test_bad_eval_rows_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}], "reference": "a"}\n{"messages": []}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        load_eval_set(path)
    with pytest.raises(ConfigError, match="eval set not found"):
        load_eval_set(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="has no rows"):
        load_eval_set(empty)


def test_the_mlflow_dataset_is_named_after_the_file_and_changes_with_the_examples():
    path = PROJECT_DIR / "configs" / "eval" / "capitals.jsonl"
    examples = load_eval_set(path)
    dataset = eval_dataset(examples, path)
    assert dataset.name == "capitals"
    assert len(dataset.df) == len(examples)
    assert eval_dataset(examples[:3], path).digest != dataset.digest
