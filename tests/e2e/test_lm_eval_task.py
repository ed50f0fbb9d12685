"""An lm-evaluation-harness task as an eval suite, end to end on the tiny model: lm-eval's
local-chat-completions client against each flavor served by a real `python -m slmflow.serve` process, and
its per-item scores through the paired statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmflow import tags
from slmflow.config import EvaluationConfig
from slmflow.evaluation.comparison import lm_eval_metrics
from slmflow.evaluation.lm_eval_runs import score_models
from slmflow.evaluation.lm_eval_tasks import load_task
from testkit.processes import PROJECT_DIR

TASK = PROJECT_DIR / "configs" / "eval" / "lm_eval" / "capitals.yaml"


def test_an_lm_eval_task_scores_each_served_flavor_and_feeds_the_paired_statistics(logged_models, tmp_path):
    task = load_task(TASK)
    items = len(Path(task.config["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines())
    scores = score_models(task, logged_models, tmp_path)
    assert set(scores) == {tags.ONNX_MODEL_NAME, tags.TRANSFORMERS_MODEL_NAME}
    # The tiny model answers its capitals with the reference sentence: every item reached and scored right.
    assert all(len(per_item) == items and all(per_item) for per_item in scores.values()), scores
    for name in scores:  # each flavor was served by its own process, which answered every item
        assert (tmp_path / f"serve-{name}.log").read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') == items
    metrics = lm_eval_metrics(scores, EvaluationConfig(eval_set=TASK))
    assert metrics["onnx-chat/lm_eval/accuracy"] == 1.0 == metrics["transformers-chat/lm_eval/accuracy"]
    assert metrics["onnx-chat/lm_eval/items"] == items
    assert metrics["delta/onnx_vs_transformers/lm_eval/accuracy"] == 0.0
    assert metrics["delta/onnx_vs_transformers/lm_eval/accuracy_ci_low"] == 0.0  # no discordant item
    assert metrics["delta/onnx_vs_transformers/lm_eval/mcnemar_p"] == pytest.approx(1.0)
