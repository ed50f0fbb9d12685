"""The fine-tune on the builtin tiny model: refusals that need the model come before training; a real short run."""

import json
import os

import mlflow
import pytest
from safetensors.torch import load_file

from slmflow.config import TrainingConfig
from slmflow.errors import TrainingDataError
from slmflow.training.dataset import load_training_set
from slmflow.training.trainer import finetune
from testkit.processes import PROJECT_DIR

DATASET = PROJECT_DIR / "configs" / "train" / "capitals-rephrased.jsonl"


def settings(**changes) -> TrainingConfig:
    return TrainingConfig(dataset=DATASET, max_steps=2, batch_size=4, **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_seq_length": 8}, r"capitals-rephrased\.jsonl:1: \d+ tokens, longer than training\.max_seq_length 8"),
        (
            {"lora": {"target_modules": ["q_proj"]}},
            r"the phi3 model has no layer q_proj \(its linear layers: .*qkv_proj",
        ),
    ],
)
def test_checks_that_need_the_model_refuse_before_training(tiny_checkpoint, tmp_path, changes, message):
    with pytest.raises(TrainingDataError, match=message):
        finetune(settings(**changes), tiny_checkpoint, load_training_set(DATASET), tmp_path, "runs:/base/checkpoint")
    assert not (tmp_path / "trainer").exists()  # the Trainer was never made


def test_a_short_fine_tune_logs_into_the_active_run_and_merges(tiny_checkpoint, tmp_path, tracking_store, monkeypatch):
    with mlflow.start_run() as run:
        monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)  # as `mlflow run` sets it for a step
        result = finetune(
            settings(held_out_fraction=0.1), tiny_checkpoint, load_training_set(DATASET), tmp_path, "runs:/r/checkpoint"
        )
        assert mlflow.active_run().info.run_id == run.info.run_id  # the callback did not end the step's run
        assert os.environ["MLFLOW_RUN_ID"] == run.info.run_id
    client = mlflow.MlflowClient()
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the Trainer's callback made no run of its own
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == 2
    assert (result.steps, result.train_rows, result.held_out_rows) == (2, 36, 4)
    assert result.held_out_loss > 0 and result.tokens > 0 and result.peak_rss_mb > 0
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["base_model_name_or_path"] == "runs:/r/checkpoint"  # a URI, not a path
    assert sorted(path.name for path in result.adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    merged = load_file(result.checkpoint_dir / "model.safetensors")
    base = load_file(tiny_checkpoint / "model.safetensors")
    assert set(merged) == set(base)  # an ordinary checkpoint: no adapter weights left in it
    changed = [name for name in base if not (merged[name] == base[name]).all()]
    assert changed and all("qkv_proj" in name for name in changed)
    assert (result.checkpoint_dir / "chat_template.jinja").read_text() == (
        tiny_checkpoint / "chat_template.jinja"
    ).read_text()
