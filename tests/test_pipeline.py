from slmflow.config import PipelineConfig
from slmflow.pipeline.runner import STEP_SECTIONS, cache_key, code_hash


def config(**overrides) -> PipelineConfig:
    data = {
        "source": {"model": "builtin:tiny-phi3"},
        "evaluation": {"eval_set": "eval.jsonl"},
        "registry": {"model_name": "m"},
        **overrides,
    }
    return PipelineConfig.model_validate(data)


def test_every_entry_point_declares_its_config_sections():
    assert set(STEP_SECTIONS) == {
        "fetch_model",
        "log_onnx_wrapper",
        "log_transformers_pipeline",
        "evaluate",
        "register",
    }
    assert all(set(sections) <= set(PipelineConfig.model_fields) for sections in STEP_SECTIONS.values())


def test_key_is_stable_and_compares_parameters_as_strings():
    first = cache_key("fetch_model", {"config": "configs/tiny.yaml"}, "abc", config())
    assert first == cache_key("fetch_model", {"config": "configs/tiny.yaml"}, "abc", config())
    assert cache_key("evaluate", {"n": 1}, "abc", config()) == cache_key("evaluate", {"n": "1"}, "abc", config())


def test_key_changes_with_commit_parameters_and_entry_point():
    base = cache_key("fetch_model", {"config": "a"}, "abc", config())
    assert base != cache_key("fetch_model", {"config": "a"}, "abd", config())
    assert base != cache_key("fetch_model", {"config": "b"}, "abc", config())
    assert base != cache_key("log_onnx_wrapper", {"config": "a"}, "abc", config())


def test_generation_change_misses_only_the_steps_that_read_it():
    before, after = config(), config(generation={"max_new_tokens": 9})
    for step, sections in STEP_SECTIONS.items():
        same = cache_key(step, {}, "c", before) == cache_key(step, {}, "c", after)
        assert same == ("generation" not in sections), step


def test_extra_inputs_such_as_the_eval_set_digest_count():
    assert cache_key("evaluate", {}, "c", config(), {"eval_set": "1"}) != cache_key(
        "evaluate", {}, "c", config(), {"eval_set": "2"}
    )


def test_code_hash_covers_the_step_file():
    assert code_hash("fetch_model") != code_hash("register")


def test_a_cached_fetch_whose_folders_are_gone_is_not_reused(tmp_path):
    from mlflow.entities import Run, RunData, RunInfo, RunTag

    from slmflow.pipeline.runner import OUTPUT_TAG_PREFIX, StepResult

    def result(**outputs) -> StepResult:
        tags = [RunTag(OUTPUT_TAG_PREFIX + k, str(v)) for k, v in outputs.items()]
        info = RunInfo("r", "0", "u", "FINISHED", 0, 0, "active")
        return StepResult(Run(info, RunData(tags=tags)), cached=True)

    assert result(checkpoint_dir=tmp_path, onnx_dir=tmp_path).has_folders("checkpoint_dir", "onnx_dir")
    assert not result(checkpoint_dir=tmp_path, onnx_dir=tmp_path / "gone").has_folders("checkpoint_dir", "onnx_dir")
    assert not result(checkpoint_dir=tmp_path).has_folders("checkpoint_dir", "onnx_dir")
