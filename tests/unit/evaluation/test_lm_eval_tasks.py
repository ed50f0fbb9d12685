from pathlib import Path

import pytest
import yaml

from slmflow import tags
from slmflow.config import EvaluationConfig, load_config
from slmflow.errors import ConfigError
from slmflow.evaluation.comparison import lm_eval_metrics
from slmflow.evaluation.lm_eval_tasks import item_scores, load_task
from testkit.processes import PROJECT_DIR

EXAMPLE_TASK = PROJECT_DIR / "configs" / "eval" / "lm_eval" / "capitals.yaml"


def test_the_example_task_loads_with_its_data_made_absolute():
    task = load_task(EXAMPLE_TASK)
    assert (task.name, task.metric) == ("slmflow_capitals", "exact_match")
    data = Path(task.config["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data == EXAMPLE_TASK.parent / "capitals.jsonl" and data.is_file()
    assert task.config["output_type"] == "generate_until"


def _task(tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load(EXAMPLE_TASK.read_text())
    config.update(changes)
    (tmp_path / "capitals.jsonl").write_text((EXAMPLE_TASK.parent / "capitals.jsonl").read_text())
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"output_type": "loglikelihood"}, "output_type must be generate_until"),
        ({"metric_list": []}, "metric_list needs at least one metric"),
        ({"dataset_kwargs": {"data_files": {"test": "missing.jsonl"}}}, "data file not found"),
        ({"dataset_kwargs": {}}, "dataset_kwargs.data_files must name the task's local data"),
        ({"task": None}, "not an lm-eval task"),
    ],
)
def test_a_task_lm_eval_cannot_run_here_is_refused_naming_the_field(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message) as refused:
        load_task(_task(tmp_path, **changes))
    assert str(refused.value).startswith("evaluation.lm_eval_task: ")


def _config(tmp_path: Path, task: str) -> Path:
    config = yaml.safe_load((PROJECT_DIR / "configs" / "tiny.yaml").read_text())
    config["evaluation"]["eval_set"] = str(PROJECT_DIR / "configs" / "eval" / "capitals.jsonl")
    config["evaluation"]["lm_eval_task"] = task
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_config_field_resolves_against_the_config_and_enters_its_hash(tmp_path):
    task = _task(tmp_path)
    config = load_config(_config(tmp_path, "task.yaml"))
    assert config.evaluation.lm_eval_task == task
    before = config.section_hash("evaluation")
    task.write_text(task.read_text().replace("max_gen_toks: 24", "max_gen_toks: 8"))
    assert load_config(_config(tmp_path, "task.yaml")).section_hash("evaluation") != before


def test_the_tasks_data_enters_the_hash_by_content_not_by_place(tmp_path):
    _task(tmp_path)
    before = load_config(_config(tmp_path, "task.yaml")).section_hash("evaluation")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    _task(moved)  # the same task and data in another folder
    assert load_config(_config(moved, "task.yaml")).section_hash("evaluation") == before
    data = tmp_path / "capitals.jsonl"
    data.write_text(data.read_text().replace("Paris", "Lyon", 1))  # one item's answer edited
    assert load_config(_config(tmp_path, "task.yaml")).section_hash("evaluation") != before


def test_a_missing_task_file_is_refused_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluation.lm_eval_task: file not found: .*nowhere.yaml"):
        load_config(_config(tmp_path, "nowhere.yaml"))


def test_item_scores_are_read_from_logged_samples_in_document_order():
    samples = [{"doc_id": 2, "exact_match": 1.0}, {"doc_id": 0, "exact_match": 0.0}, {"doc_id": 1, "exact_match": 1}]
    assert item_scores(samples, "exact_match") == [False, True, True]
    with pytest.raises(ValueError, match="not a 0/1 score"):
        item_scores([{"doc_id": 0, "exact_match": 0.5}], "exact_match")
    with pytest.raises(ValueError, match="no items"):
        item_scores([], "exact_match")


def test_lm_eval_scores_feed_the_paired_statistics():
    evaluation = EvaluationConfig(eval_set=Path("x.jsonl"))
    onnx = [True] * 18 + [False] * 2
    transformers = [True] * 16 + [False] * 4
    champion = [True] * 20
    metrics = lm_eval_metrics(
        {tags.ONNX_MODEL_NAME: onnx, tags.TRANSFORMERS_MODEL_NAME: transformers, tags.CHAMPION_MODEL_NAME: champion},
        evaluation,
    )
    assert metrics["onnx-chat/lm_eval/accuracy"] == pytest.approx(0.9)
    assert metrics["onnx-chat/lm_eval/items"] == 20.0
    assert metrics["delta/onnx_vs_transformers/lm_eval/accuracy"] == pytest.approx(0.1)
    assert metrics["delta/onnx_vs_transformers/lm_eval/mcnemar_p"] == pytest.approx(0.5)  # 2 discordant, both one way
    low, high = (metrics[f"delta/transformers-chat_vs_champion/lm_eval/accuracy_ci_{end}"] for end in ("low", "high"))
    assert low < -0.2 < high <= 0.0
    assert "delta/champion_vs_champion/lm_eval/accuracy" not in metrics
