import shutil
from pathlib import Path

import pytest

from slmflow.code import module_digest
from slmflow.config import PipelineConfig
from slmflow.pipeline.contract import STEPS, mlproject_text
from slmflow.pipeline.runner import Handoff, StepResult, cache_key
from slmflow.registry.lineage import FLAVOR_MODULES
from testkit.processes import PROJECT_DIR

PIPELINE = [name for name, step in STEPS.items() if step.in_pipeline]


def config(tmp_path: Path, eval_text: str = '{"question": "q", "answer": "a"}\n', **overrides) -> PipelineConfig:
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(eval_text)
    data = {
        "source": {"model": "builtin:tiny-phi3"},
        "evaluation": {"eval_set": str(eval_set)},
        "registry": {"model_name": "m"},
        **overrides,
    }
    return PipelineConfig.model_validate(data)


@pytest.mark.parametrize(
    ("path", "kubernetes"), [("MLproject", False), ("deploy/kubernetes/MLproject", True)], ids=["root", "kubernetes"]
)
def test_mlproject_is_what_the_contracts_declare(path, kubernetes):
    """Regenerate with: python -m slmflow.pipeline.contract [--kubernetes] > PATH"""
    assert (PROJECT_DIR / path).read_text() == mlproject_text(kubernetes)


def test_every_step_reads_known_config_sections_and_has_a_module():
    for name, step in STEPS.items():
        assert all(section.split(".")[0] in PipelineConfig.model_fields for section in step.sections), name
        assert (PROJECT_DIR / "steps" / f"{name}.py").is_file()
    assert PIPELINE == [
        "fetch_model",
        "finetune",  # run by main only when the config has a training section
        "log_onnx_wrapper",
        "log_transformers_pipeline",
        "evaluate",
        "register",
    ]


def test_argument_parser_and_outputs_follow_the_contract():
    step = STEPS["log_onnx_wrapper"]
    args = step.argument_parser().parse_args(["--onnx-uri", "runs:/r/onnx"])
    assert (args.config, args.onnx_uri) == ("configs/phi3-mini-4k-instruct.yaml", "runs:/r/onnx")
    with pytest.raises(SystemExit):
        step.argument_parser().parse_args([])  # onnx_uri is required
    with pytest.raises(ValueError, match="step 'log_onnx_wrapper' declares no output onnx_dir"):
        step.check_outputs({"onnx_dir": "/tmp/x"})


def test_key_ignores_where_the_config_and_the_checkout_are(tmp_path):
    here, there = tmp_path / "a", tmp_path / "b" / "deeper"
    here.mkdir()
    there.mkdir(parents=True)
    step = STEPS["evaluate"]
    params = {"onnx_model_uri": "models:/m-1", "transformers_model_uri": "models:/m-2"}
    key_here = cache_key(step, {"config": str(here / "c.yaml"), **params}, config(here))
    key_there = cache_key(step, {"config": "configs/c.yaml", **params}, config(there))
    assert key_here == key_there
    assert key_here != cache_key(step, params, config(there, eval_text="{}\n"))  # the eval set by its content


def test_handoffs_count_by_their_content_not_their_uri(tmp_path):
    step = STEPS["log_onnx_wrapper"]
    one = cache_key(step, {"onnx_uri": Handoff("runs:/r1/onnx", "digest")}, config(tmp_path))
    assert one == cache_key(step, {"onnx_uri": Handoff("runs:/r2/onnx", "digest")}, config(tmp_path))
    assert one != cache_key(step, {"onnx_uri": Handoff("runs:/r1/onnx", "other")}, config(tmp_path))


def test_generation_change_misses_only_the_steps_that_read_it(tmp_path):
    before, after = config(tmp_path), config(tmp_path, generation={"max_new_tokens": 9})
    for name in PIPELINE:
        step = STEPS[name]
        same = cache_key(step, {}, before) == cache_key(step, {}, after)
        assert same == (not any(s.startswith("generation") for s in step.sections)), name


def test_a_local_source_counts_by_content_not_path(tmp_path):
    step = STEPS["fetch_model"]
    at_a = config(tmp_path, source={"model": "local:/a/model"})
    at_b = config(tmp_path, source={"model": "local:/b/model"})
    assert cache_key(step, {"revision": "d1"}, at_a) == cache_key(step, {"revision": "d1"}, at_b)
    assert cache_key(step, {"revision": "d1"}, at_a) != cache_key(step, {"revision": "d2"}, at_a)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of what a commit of the project holds, to edit like a new commit."""
    copy = tmp_path / "checkout"
    for name in ("steps", "slmflow"):
        shutil.copytree(PROJECT_DIR / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.txt", "conda.yaml", "README.md", "MLproject"):
        shutil.copy(PROJECT_DIR / name, copy / name)
    return copy


def keys_of(checkout: Path, tmp_path: Path) -> dict[str, str]:
    """Every pipeline step's cache key, and each flavor's registered identity code hash, in a checkout."""
    found = {name: cache_key(STEPS[name], {}, config(tmp_path), checkout) for name in PIPELINE}
    found.update({flavor: module_digest(module, checkout) for flavor, module in FLAVOR_MODULES.items()})
    return found


def test_readme_commit_keeps_every_key_and_a_pin_change_redoes_every_step(checkout, tmp_path):
    before = keys_of(checkout, tmp_path)
    (checkout / "README.md").write_text("# only the docs changed\n")
    assert keys_of(checkout, tmp_path) == before
    pins = (checkout / "requirements.txt").read_text()
    (checkout / "requirements.txt").write_text(pins.replace("tqdm==4.70.1", "tqdm==4.70.0"))
    after = keys_of(checkout, tmp_path)
    assert all(after[name] != before[name] for name in before)


def test_a_module_nothing_imports_or_a_server_change_keeps_every_key(checkout, tmp_path):
    before = keys_of(checkout, tmp_path)
    (checkout / "slmflow" / "unrelated_module.py").write_text("ANSWER = 42\n")
    with (checkout / "slmflow" / "serving" / "app.py").open("a") as handle:
        handle.write("# a server fix\n")
    assert keys_of(checkout, tmp_path) == before


def test_with_an_lm_eval_task_a_server_change_redoes_evaluate_only(checkout, tmp_path):
    """The task runs each model behind `python -m slmflow.serve`: then, and only then, evaluate runs the server."""
    task = PROJECT_DIR / "configs" / "eval" / "lm_eval" / "capitals.yaml"
    with_task = config(tmp_path, evaluation={"eval_set": str(tmp_path / "eval.jsonl"), "lm_eval_task": str(task)})

    def keys() -> dict[str, str]:
        return {name: cache_key(STEPS[name], {}, with_task, checkout) for name in PIPELINE}

    before = keys()
    with (checkout / "slmflow" / "serving" / "app.py").open("a") as handle:
        handle.write("# a server fix\n")
    after = keys()
    assert {name for name in before if after[name] != before[name]} == {"evaluate"}


def test_an_onnx_engine_change_redoes_the_onnx_wrapper_and_not_fetch_model(checkout, tmp_path):
    before = keys_of(checkout, tmp_path)
    with (checkout / "slmflow" / "chat" / "onnx" / "engine.py").open("a") as handle:
        handle.write("# a decoding fix\n")
    after = keys_of(checkout, tmp_path)
    changed = {name for name in before if after[name] != before[name]}
    # register hashes the served code itself; evaluate and register also follow the new model's URI.
    assert changed == {"log_onnx_wrapper", "register", "onnx-chat"}


def test_a_library_change_redoes_exactly_the_steps_that_import_it(checkout, tmp_path):
    before = keys_of(checkout, tmp_path)
    with (checkout / "slmflow" / "fetch" / "onnx_build.py").open("a") as handle:
        handle.write("# a builder fix\n")
    after = keys_of(checkout, tmp_path)
    changed = {name for name in before if after[name] != before[name]}
    # finetune builds the fine-tuned checkpoint's ONNX form; the logging steps read folders without the builder.
    assert changed == {"fetch_model", "finetune"}


def test_a_trainer_change_redoes_finetune_only(checkout, tmp_path):
    before = keys_of(checkout, tmp_path)
    with (checkout / "slmflow" / "training" / "trainer.py").open("a") as handle:
        handle.write("# a training fix\n")
    after = keys_of(checkout, tmp_path)
    assert {name for name in before if after[name] != before[name]} == {"finetune"}


def test_new_training_data_misses_finetune_and_register_and_not_the_fetch(tmp_path):
    def trained(rows: str) -> PipelineConfig:
        (tmp_path / "train.jsonl").write_text(rows)
        return config(tmp_path, training={"dataset": str(tmp_path / "train.jsonl")})

    before = {name: cache_key(STEPS[name], {}, trained("a\n")) for name in PIPELINE}
    after = {name: cache_key(STEPS[name], {}, trained("b\n")) for name in PIPELINE}
    # The steps after finetune follow its outputs by content: new weights redo them through their inputs.
    assert {name for name in before if after[name] != before[name]} == {"finetune", "register"}


def test_a_step_file_change_redoes_that_step(checkout, tmp_path):
    def key(name: str) -> str:
        return cache_key(STEPS[name], {}, config(tmp_path), checkout)

    evaluate, register = key("evaluate"), key("register")
    with (checkout / "steps" / "register.py").open("a") as handle:
        handle.write("# changed\n")
    assert key("evaluate") == evaluate and key("register") != register


def test_outputs_are_read_with_their_content():
    from mlflow.entities import Run, RunData, RunInfo, RunTag

    tags = [RunTag("slmflow.output.onnx_uri", "runs:/r/onnx"), RunTag("slmflow.content.onnx_uri", "abc")]
    result = StepResult(Run(RunInfo("r", "0", "u", "FINISHED", 0, 0, "active"), RunData(tags=tags)), cached=True)
    assert result.output("onnx_uri") == Handoff("runs:/r/onnx", "abc")
    from slmflow.errors import StepFailedError

    with pytest.raises(StepFailedError, match="recorded no output 'model_uri'"):
        result.output("model_uri")
    named_only = [RunTag("slmflow.output.model_uri", "models:/m-1")]  # a URI that names immutable content
    run = Run(RunInfo("r", "0", "u", "FINISHED", 0, 0, "active"), RunData(tags=named_only))
    assert StepResult(run, cached=False).output("model_uri") == Handoff("models:/m-1", "models:/m-1")


class FakeRunner:
    """Records what run_pipeline asks each step for; every step 'outputs' <label>:<output name>."""

    def __init__(self, config, *args, **kwargs) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.labels = [label for label in config.source.variant_labels if label]
        FakeRunner.last = self

    def run(self, entry_point, parameters, label=None):
        from mlflow.entities import Run, RunData, RunInfo, RunTag

        name = label or entry_point
        self.calls.append((entry_point, name, dict(parameters)))
        step = STEPS[entry_point]
        names = [*step.outputs, *(f"{o}.{label}" for o in step.variant_outputs for label in self.labels)]
        outputs = [RunTag(f"slmflow.output.{o}", f"{name}:{o}") for o in names]
        return StepResult(
            Run(RunInfo(f"run-{name}", "0", "u", "FINISHED", 0, 0, "active"), RunData(tags=outputs)), False
        )


@pytest.mark.parametrize("required", [True, False])
def test_the_base_is_logged_in_both_flavors_and_handed_to_evaluate_only_when_required(tmp_path, monkeypatch, required):
    (tmp_path / "train.jsonl").write_text("x\n")
    trained = config(
        tmp_path, training={"dataset": str(tmp_path / "train.jsonl"), "require_improvement_over_base": required}
    )
    calls = fake_pipeline(monkeypatch, trained)
    evaluate = {k: getattr(v, "value", v) for k, v in calls["evaluate"].items()}
    # The candidates come from the fine-tuned checkpoint, whatever the setting.
    assert calls["log_onnx_wrapper"]["onnx_uri"].value == "finetune:onnx_uri"
    if not required:
        assert "log_onnx_wrapper.base" not in calls and "base_onnx_model_uri" not in evaluate
        return
    assert calls["log_onnx_wrapper.base"]["onnx_uri"].value == "fetch_model:onnx_uri"
    assert calls["log_transformers_pipeline.base"]["checkpoint_uri"].value == "fetch_model:checkpoint_uri"
    assert evaluate["base_onnx_model_uri"] == "log_onnx_wrapper.base:model_uri"
    assert evaluate["base_transformers_model_uri"] == "log_transformers_pipeline.base:model_uri"
    assert evaluate["onnx_model_uri"] == "log_onnx_wrapper:model_uri"


def fake_pipeline(monkeypatch, pipeline_config: PipelineConfig) -> dict[str, dict]:
    """What run_pipeline asks each step for (by the label the parent records), through FakeRunner."""
    import slmflow.pipeline.runner as runner

    monkeypatch.setattr(runner, "StepRunner", FakeRunner)
    monkeypatch.setattr(runner, "check_configured_training_set", lambda *args: None)
    monkeypatch.setattr(runner, "resolve_revision", lambda *args: "rev")
    monkeypatch.setattr(runner, "champion_to_measure", lambda *args: Handoff("none", "none"))
    monkeypatch.setattr(runner, "set_outputs", lambda *args, **kwargs: None)
    monkeypatch.setattr(runner.mlflow, "set_tag", lambda *args: None)
    runner.run_pipeline(pipeline_config, "c.yaml", use_cache=True, settings=None)
    return {name: parameters for _, name, parameters in FakeRunner.last.calls}


def test_each_variant_is_logged_by_its_own_step_and_evaluate_gets_them_all_by_name(tmp_path, monkeypatch):
    variants = config(
        tmp_path, source={"model": "builtin:tiny-phi3", "builder": [{"block_size": 32}, {"precision": "fp32"}]}
    )
    calls = fake_pipeline(monkeypatch, variants)
    for label in ("int4-b32", "fp32"):
        logged = calls[f"log_onnx_wrapper.{label}"]
        assert (logged["onnx_uri"].value, logged["variant"]) == (f"fetch_model:onnx_uri.{label}", label)
    assert "log_onnx_wrapper" not in calls
    assert calls["evaluate"]["onnx_model_uri"].value == (
        "onnx-chat-int4-b32=log_onnx_wrapper.int4-b32:model_uri onnx-chat-fp32=log_onnx_wrapper.fp32:model_uri"
    )
    single = fake_pipeline(monkeypatch, config(tmp_path))
    assert "variant" not in single["log_onnx_wrapper"]  # one variant: the same parameters as ever
    assert single["evaluate"]["onnx_model_uri"].value == "log_onnx_wrapper:model_uri"


def test_changing_one_variant_keeps_the_other_variants_logging_key(tmp_path):
    def keyed(*block_sizes: int) -> dict[str, str]:
        variants = config(
            tmp_path, source={"model": "builtin:tiny-phi3", "builder": [{"block_size": b} for b in block_sizes]}
        )
        unchanged = {"onnx_uri": Handoff("runs:/r/onnx-int4-b32", "b32 digest"), "variant": "int4-b32"}
        return {
            "fetch_model": cache_key(STEPS["fetch_model"], {"revision": "rev"}, variants),
            "log_onnx_wrapper.int4-b32": cache_key(STEPS["log_onnx_wrapper"], unchanged, variants),
        }

    before, after = keyed(32, 16), keyed(32, 64)
    assert before["fetch_model"] != after["fetch_model"]
    assert before["log_onnx_wrapper.int4-b32"] == after["log_onnx_wrapper.int4-b32"]


def test_requiring_improvement_over_the_base_redoes_register_and_never_the_training(tmp_path):
    (tmp_path / "train.jsonl").write_text("x\n")

    def keys(**training) -> dict[str, str]:
        trained = config(tmp_path, training={"dataset": str(tmp_path / "train.jsonl"), **training})
        return {name: cache_key(STEPS[name], {}, trained) for name in PIPELINE}

    before, after = keys(), keys(require_improvement_over_base=True)
    assert {name for name in before if after[name] != before[name]} == {"register"}
    assert keys(require_improvement_over_base=False) == before
