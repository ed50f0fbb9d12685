"""What a fine-tuned version is registered as: its identity and the description of what it was trained on."""

from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

from slmflow.config import BuilderOptions, load_config
from slmflow.registry.lineage import TrainingFacts, registration_description, registration_identity
from slmflow.registry.registrar import Evaluation
from slmflow.registry.rules import Candidate
from testkit.processes import PROJECT_DIR

METRICS = {"accuracy": 1.0, "tokens_per_second": 100.0}


def finetune_run(**metrics) -> Run:
    values = {"dataset_rows": 40, "steps": 10, "final_loss": 1.0671, "held_out_loss": 1.0816, **metrics}
    data = RunData(
        metrics=[Metric(key, value, 0, 0) for key, value in values.items()],
        tags=[RunTag("slmflow.dataset_digest", "ab" * 32), RunTag("slmflow.base_revision", "base123")],
    )
    return Run(RunInfo("ft1", "0", "u", "FINISHED", 0, 0, "active"), data)


def test_training_facts_come_from_the_finetune_run_and_name_the_dataset():
    facts = TrainingFacts.from_run(finetune_run())
    assert facts.describe() == (
        f"Fine-tuned (LoRA, merged) from base revision base123 on a training set of 40 rows (sha256 {'ab' * 32}): "
        "10 steps, final training loss 1.0671, held-out loss 1.0816 (finetune run ft1)."
    )
    assert "held-out" not in TrainingFacts.from_run(finetune_run(held_out_loss=float("nan"))).describe()


def test_the_identity_holds_the_dataset_digest_only_when_fine_tuned():
    config = load_config(PROJECT_DIR / "configs" / "tiny-retrain.yaml")
    facts = TrainingFacts.from_run(finetune_run())
    plain = registration_identity(config, "finetuned:w1", "code")
    assert set(plain) == {"source_revision", "config_hash", "code_hash"}
    assert registration_identity(config, "finetuned:w1", "code", facts) == {**plain, "dataset_digest": "ab" * 32}


def test_among_several_variants_the_identity_names_the_registered_one(tmp_path):
    tiny = load_config(PROJECT_DIR / "configs" / "tiny.yaml")
    assert "candidate" not in registration_identity(tiny, "rev", "code", None, "onnx-chat")  # as before variants
    several = tiny.model_copy(
        update={"source": tiny.source.model_copy(update={"builder": (BuilderOptions(), BuilderOptions(block_size=16))})}
    )
    b32 = registration_identity(several, "rev", "code", None, "onnx-chat-int4-b32")
    assert b32["candidate"] == "onnx-chat-int4-b32"
    assert b32 != registration_identity(several, "rev", "code", None, "onnx-chat-int4-b16")


def test_the_description_says_what_the_version_was_trained_on():
    config = load_config(PROJECT_DIR / "configs" / "tiny-retrain.yaml")
    candidates = {"onnx-chat": Candidate("onnx-chat", "models:/m-1", METRICS)}
    evaluation = Evaluation("ev1", candidates, {}, None, None, 0.95)
    facts = TrainingFacts.from_run(finetune_run())
    described = registration_description(config, evaluation, "finetuned:w1", facts)
    assert "at revision finetuned:w1" in described and "(evaluate run ev1)" in described
    assert facts.describe() in described
    assert facts.describe() not in registration_description(config, evaluation, "r")
