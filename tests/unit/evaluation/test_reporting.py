import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from slmflow.evaluation.dataset import load_eval_set
from slmflow.evaluation.metrics import ExampleResult, ModelReport
from slmflow.evaluation.reporting import ANSWER_SCORES, evaluation_records, log_reports, model_id

EXAMPLES = 4


@pytest.fixture(scope="module")
def logged_evaluation(logged_models, tiny_config):
    """Measurements made up for both logged models (the runner has its own tests), logged as the step logs them."""
    examples = load_eval_set(tiny_config.evaluation.eval_set, max_examples=EXAMPLES)
    reports = [
        ModelReport(
            name,
            uri,
            load_seconds=1.0,
            peak_rss_mb=100.0,
            size_mb=2.0,
            results=[ExampleResult(e.reference, 0.1, 7, True, True, 1.0) for e in examples],
            ttft_s=[0.01] if name == "onnx-chat" else [],
        )
        for name, uri in logged_models.items()
    ]
    reports[1].results[0] = ExampleResult("I do not know.", 0.2, 4, False, False, 0.0)
    with mlflow.start_run() as run:
        log_reports(examples, reports, tiny_config.evaluation.eval_set)
    return MlflowClient().get_run(run.info.run_id), examples


def test_run_metrics_are_prefixed_by_model_and_name_the_candidates(logged_evaluation, logged_models):
    run, _ = logged_evaluation
    assert run.data.metrics["onnx-chat/accuracy"] == 1.0
    assert run.data.metrics["transformers-chat/accuracy"] == 0.75
    assert "onnx-chat/ttft_p50_s" in run.data.metrics
    assert run.data.metrics["agreement_rate"] == 0.75
    assert run.data.params["eval_examples"] == str(EXAMPLES)
    for name, uri in logged_models.items():
        assert run.data.tags[f"slmflow.candidate.{name}"] == uri
    [dataset_input] = [d for d in run.inputs.dataset_inputs if d.dataset.name == "capitals"]
    assert dataset_input.dataset.name == "capitals"


def test_each_logged_model_carries_its_metrics_against_the_eval_set(logged_evaluation, logged_models):
    run, _ = logged_evaluation
    for name, expected_accuracy in (("onnx-chat", 1.0), ("transformers-chat", 0.75)):
        model = MlflowClient().get_logged_model(model_id(logged_models[name]))
        metrics = {m.key: m for m in model.metrics if m.run_id == run.info.run_id}
        assert metrics["accuracy"].value == expected_accuracy
        assert {"rouge_l", "tokens_per_second", "latency_p95_s", "size_mb"} <= set(metrics)
        assert metrics["accuracy"].dataset_name == "capitals"


def test_every_example_is_a_trace_with_both_answers_and_their_scores(logged_evaluation):
    run, examples = logged_evaluation
    traces = mlflow.search_traces(run_id=run.info.run_id, return_type="list")
    assert len(traces) == len(examples)
    for trace in traces:
        scores = {a.name: a for a in trace.info.assessments}
        for model in ("onnx-chat", "transformers-chat"):
            assert {f"{model}/{score}" for score in ANSWER_SCORES} <= set(scores)
    wrong = [t for t in traces if "I do not know." in json.dumps(t.data.response)]
    assert len(wrong) == 1
    assert {a.name: a.value for a in wrong[0].info.assessments}["transformers-chat/correct"] is False


def test_table_report_and_plots_are_artifacts(logged_evaluation):
    run, _ = logged_evaluation
    uri = f"runs:/{run.info.run_id}"
    table = json.loads(Path(mlflow.artifacts.download_artifacts(f"{uri}/eval/examples.json")).read_text())
    assert len(table["data"]) == EXAMPLES
    report = mlflow.artifacts.load_dict(f"{uri}/eval/report.json")
    assert report["onnx-chat"]["metrics"]["accuracy"] == 1.0
    for plot in ("latency.png", "accuracy_vs_speed.png"):
        png = mlflow.artifacts.download_artifacts(f"{uri}/eval/plots/{plot}")
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_records_pair_each_question_with_every_answer(logged_evaluation):
    _, examples = logged_evaluation
    report = ModelReport("m", "models:/m-x", 0, 0, 0, [ExampleResult("a", 0, 0, True, True, 1) for _ in examples])
    [first, *_] = evaluation_records(examples, [report])
    assert first["inputs"]["messages"][-1]["content"] == examples[0].question
    assert first["outputs"] == {"m": "a"}
    assert first["expectations"]["key_fact"] == examples[0].answer


def test_a_model_uri_that_is_not_a_logged_model_is_refused():
    with pytest.raises(ValueError, match="not a logged model URI"):
        model_id("runs:/abc/model")
