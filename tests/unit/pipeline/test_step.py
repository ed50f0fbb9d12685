import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from slmflow import tags
from slmflow.errors import SourceError
from slmflow.pipeline.contract import CONFIG, StepContract, variant_output
from slmflow.pipeline.step import run_step, set_outputs
from testkit.processes import PROJECT_DIR

TINY = ["--config", str(PROJECT_DIR / "configs" / "tiny.yaml")]
TEST_STEP = StepContract("test", "a step for the tests", (CONFIG,), outputs=("answer",))


def only_run() -> object:
    [run] = MlflowClient().search_runs(["0"])
    return run


def test_body_runs_inside_a_run_with_the_config_hash(tracking_store, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = {}

    def body(args, config, settings):
        seen["model"] = config.source.model
        seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
        mlflow.log_param("x", "1")

    run_step(TEST_STEP, body, argv=TINY)
    run = only_run()
    assert run.info.status == "FINISHED"
    assert seen == {"model": "builtin:tiny-phi3", "offline": "1"}  # the builtin path never waits on a hub
    assert len(run.data.tags[tags.CONFIG_HASH]) == 16


def test_user_error_fails_the_run_with_one_clear_line(tracking_store, capsys):
    def body(args, config, settings):
        raise SourceError("cannot fetch hub repo 'a/b'")

    with pytest.raises(SystemExit) as exited:
        run_step(TEST_STEP, body, argv=TINY)
    assert exited.value.code == 1
    run = only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags[tags.ERROR] == "SourceError: cannot fetch hub repo 'a/b'"
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: SourceError: cannot fetch hub repo 'a/b'"
    assert "Traceback" not in err


def test_unexpected_error_keeps_its_traceback(tracking_store, capsys):
    def body(args, config, settings):
        raise KeyError("bug")

    with pytest.raises(SystemExit):
        run_step(TEST_STEP, body, argv=TINY)
    assert only_run().info.status == "FAILED"
    assert "Traceback" in capsys.readouterr().err


def test_bad_config_fails_before_the_body(tracking_store, tmp_path):
    (tmp_path / "c.yaml").write_text("source: {model: builtin:tiny-phi3}\nbogus: 1\n")
    with pytest.raises(SystemExit):
        run_step(TEST_STEP, lambda *a: pytest.fail("body ran"), argv=["--config", str(tmp_path / "c.yaml")])
    assert "bogus: unknown key" in only_run().data.tags[tags.ERROR]


def test_set_outputs_records_declared_outputs_and_refuses_others(tracking_store):
    def body(args, config, settings):
        set_outputs(TEST_STEP, contents={"answer": "sha"}, answer="runs:/x/answer")

    run_step(TEST_STEP, body, argv=TINY)
    recorded = only_run().data.tags
    assert recorded[tags.OUTPUT_PREFIX + "answer"] == "runs:/x/answer"
    assert recorded[tags.CONTENT_PREFIX + "answer"] == "sha"
    with pytest.raises(ValueError, match="declares no output onnx_dir"):
        set_outputs(TEST_STEP, onnx_dir="/tmp/onnx")


def test_a_step_records_the_cache_key_main_handed_it_as_it_starts(tracking_store, monkeypatch):
    monkeypatch.setenv("SLMFLOW_STEP_CACHE_KEY", "k" * 64)
    seen = {}

    def body(args, config, settings):
        seen["key"] = MlflowClient().get_run(mlflow.active_run().info.run_id).data.tags.get(tags.CACHE_KEY)

    run_step(TEST_STEP, body, argv=TINY)
    assert seen["key"] == "k" * 64


def test_a_per_variant_output_is_declared_by_its_base_name():
    step = StepContract(
        "fetch", "a step for the tests", (CONFIG,), outputs=("onnx_uri",), variant_outputs=("onnx_uri",)
    )
    step.check_outputs(("onnx_uri", variant_output("onnx_uri", "int4-b32")))
    assert variant_output("onnx_uri", "") == "onnx_uri"
    with pytest.raises(ValueError, match="declares no output other.int4-b32"):
        step.check_outputs(("other.int4-b32",))
