import json
import warnings
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from slmflow.evaluation.dataset import load_examples
from slmflow.evaluation.metrics import ExampleResult, ModelReport
from slmflow.evaluation.model_uris import logged_model_id
from slmflow.evaluation.reporting import ANSWER_SCORES, evaluation_records, log_reports

EXAMPLES = 24  # every capitals item: enough rows for mlflow.genai.evaluate's threads to contend for sqlite


@pytest.fixture(scope="module")
def logged_evaluation(logged_models, tiny_config):
    """Measurements made up for both logged models and a champion (the runner has its own tests), logged as
    the step logs them."""
    evaluation = tiny_config.evaluation.model_copy(update={"max_examples": EXAMPLES})
    examples = load_examples(evaluation)

    def report(name, uri, wrong=()):
        results = [
            ExampleResult("I do not know.", 0.2, 4, False, False, 0.0)
            if index in wrong
            else ExampleResult(e.reference, 0.1, 7, True, True, 1.0)
            for index, e in enumerate(examples)
        ]
        return ModelReport(name, uri, 1.0, 100.0, 2.0, results, [0.01] if name == "onnx-chat" else [])

    reports = [
        report(name, uri, wrong=(0,) if name == "transformers-chat" else ()) for name, uri in logged_models.items()
    ]
    champion = report("champion", "models:/tiny-phi3-chat/1", wrong=(1, 2))
    with warnings.catch_warnings(record=True) as caught, mlflow.start_run() as run:
        warnings.simplefilter("always")
        log_reports(examples, reports, evaluation, champion)
    return MlflowClient().get_run(run.info.run_id), examples, caught


def test_run_metrics_are_prefixed_by_model_and_name_the_candidates(logged_evaluation, logged_models):
    run, _, _ = logged_evaluation
    metrics = run.data.metrics
    assert metrics["onnx-chat/accuracy"] == 1.0
    assert metrics["transformers-chat/accuracy"] == pytest.approx(23 / 24)
    assert metrics["onnx-chat/accuracy/capitals"] == 1.0
    assert metrics["transformers-chat/accuracy_ci_low"] < metrics["transformers-chat/accuracy"]
    assert metrics["transformers-chat/accuracy_ci_high"] <= 1.0
    assert "onnx-chat/ttft_p50_s" in metrics
    assert metrics["agreement_rate"] == pytest.approx(23 / 24)
    assert run.data.params["eval_examples"] == str(EXAMPLES) and len(run.data.params["eval_digest"]) == 64
    for name, uri in logged_models.items():
        assert run.data.tags[f"slmflow.candidate.{name}"] == uri
    assert "slmflow.candidate.champion" not in run.data.tags  # measured, never a candidate
    [dataset_input] = [d for d in run.inputs.dataset_inputs if d.dataset.name == "capitals"]
    assert dataset_input.dataset.name == "capitals"


def test_paired_comparisons_are_metrics_with_their_intervals(logged_evaluation):
    run, _, _ = logged_evaluation
    metrics = run.data.metrics
    assert metrics["delta/onnx_vs_transformers/accuracy"] == pytest.approx(1 / 24)
    assert metrics["delta/onnx_vs_transformers/accuracy_ci_low"] == 0.0  # one discordant item
    assert metrics["delta/onnx-chat_vs_champion/accuracy"] == pytest.approx(2 / 24)
    assert metrics["delta/onnx-chat_vs_champion/mcnemar_p"] == pytest.approx(0.5)
    low, high = (metrics[f"delta/transformers-chat_vs_champion/accuracy_ci_{end}"] for end in ("low", "high"))
    assert metrics["delta/transformers-chat_vs_champion/accuracy"] == pytest.approx(1 / 24)
    assert low < 1 / 24 < high
    assert metrics["delta/onnx-chat_vs_champion/latency_ratio"] == pytest.approx(1.0)
    assert metrics["champion/accuracy"] == pytest.approx(22 / 24)


def test_each_logged_model_carries_its_metrics_against_the_eval_set(logged_evaluation, logged_models):
    run, _, _ = logged_evaluation
    for name, expected_accuracy in (("onnx-chat", 1.0), ("transformers-chat", 23 / 24)):
        model = MlflowClient().get_logged_model(logged_model_id(logged_models[name]))
        metrics = {m.key: m for m in model.metrics if m.run_id == run.info.run_id}
        assert metrics["accuracy"].value == pytest.approx(expected_accuracy)
        assert {"rouge_l", "tokens_per_second", "latency_p95_s", "size_mb"} <= set(metrics)
        assert metrics["accuracy"].dataset_name == "capitals"


def test_every_example_is_a_trace_with_every_answer_and_its_scores_and_no_warning(logged_evaluation):
    run, examples, caught = logged_evaluation
    traces = mlflow.search_traces(run_id=run.info.run_id, return_type="list")
    assert len(traces) == len(examples) == EXAMPLES
    for trace in traces:
        scores = {a.name: a for a in trace.info.assessments}
        for model in ("onnx-chat", "transformers-chat", "champion"):
            assert {f"{model}/{score}" for score in ANSWER_SCORES} <= set(scores)
    wrong = [t for t in traces if "I do not know." in json.dumps(t.data.response)]
    assert len(wrong) == 3
    assert sum(not {a.name: a.value for a in t.info.assessments}["champion/correct"] for t in wrong) == 2
    assert not [w for w in caught if "QueuePool" in str(w.message) or "trace" in str(w.message).lower()]


def test_table_report_and_plots_are_artifacts(logged_evaluation):
    run, _, _ = logged_evaluation
    uri = f"runs:/{run.info.run_id}"
    table = json.loads(Path(mlflow.artifacts.download_artifacts(f"{uri}/eval/examples.json")).read_text())
    assert len(table["data"]) == EXAMPLES
    report = mlflow.artifacts.load_dict(f"{uri}/eval/report.json")
    assert report["onnx-chat"]["metrics"]["accuracy"] == 1.0
    for plot in ("latency.png", "accuracy_vs_speed.png"):
        png = mlflow.artifacts.download_artifacts(f"{uri}/eval/plots/{plot}")
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_records_pair_each_question_with_every_answer(logged_evaluation):
    _, examples, _ = logged_evaluation
    report = ModelReport("m", "models:/m-x", 0, 0, 0, [ExampleResult("a", 0, 0, True, True, 1) for _ in examples])
    [first, *_] = evaluation_records(examples, [report])
    assert first["inputs"]["messages"][-1]["content"] == examples[0].question
    assert first["outputs"] == {"m": "a"}
    assert first["expectations"]["key_fact"] == examples[0].answer
