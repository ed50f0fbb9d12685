"""The evaluate step's wiring of the base models: each measured under `base-<flavor>` and handed on by flavor."""

import argparse

import pytest

import steps.evaluate as step
from slmflow.config import EvaluationConfig


@pytest.mark.parametrize("with_base", [True, False])
def test_the_base_is_measured_in_each_flavor_beside_the_candidates(monkeypatch, with_base):
    measured, logged = [], {}
    monkeypatch.setattr(step, "load_examples", lambda evaluation: ["item"])
    monkeypatch.setattr(
        step, "evaluate_model", lambda name, uri, examples, tokens, batch: measured.append((name, uri)) or name
    )

    def log_reports(examples, reports, evaluation, champion, bases):
        logged.update(reports=reports, champion=champion, bases=bases)
        return {}

    monkeypatch.setattr(step, "log_reports", log_reports)
    base = {"base_onnx_model_uri": "models:/m-b1", "base_transformers_model_uri": "models:/m-b2"}
    args = argparse.Namespace(
        onnx_model_uri="models:/m-1",
        transformers_model_uri="models:/m-2",
        champion_model_uri="none",
        **(base if with_base else dict.fromkeys(base, "none")),
    )
    config = argparse.Namespace(evaluation=EvaluationConfig(eval_set="eval.jsonl"))
    step.evaluate(args, config, None)
    expected = [("onnx-chat", "models:/m-1"), ("transformers-chat", "models:/m-2")]
    if with_base:
        expected += [("base-onnx-chat", "models:/m-b1"), ("base-transformers-chat", "models:/m-b2")]
    assert measured == expected
    assert logged["reports"] == ["onnx-chat", "transformers-chat"] and logged["champion"] is None
    assert logged["bases"] == (
        {"onnx-chat": "base-onnx-chat", "transformers-chat": "base-transformers-chat"} if with_base else {}
    )
