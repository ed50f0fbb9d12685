"""Each bad training set is refused before training with one line naming the row or field."""

import json

import pytest

from slmflow.config import EvaluationConfig, SplitConfig, SuiteConfig
from slmflow.errors import TrainingDataError
from slmflow.evaluation.dataset import all_examples, load_examples
from slmflow.training.dataset import (
    check_leakage,
    check_lengths,
    check_training_set,
    eval_questions,
    parse_training_set,
    split_held_out,
)
from slmflow.training.lora import check_target_modules, target_modules
from testkit.processes import PROJECT_DIR


def chat(*turns):
    return json.dumps({"messages": [{"role": role, "content": content} for role, content in turns]})


GOOD = chat(("system", "Be brief."), ("user", "Capital of Spain?"), ("assistant", "Madrid."))


def test_a_good_row_splits_into_prompt_and_answer():
    (row,) = parse_training_set(GOOD + "\n\n", "train.jsonl")
    assert row.where == "train.jsonl:1"
    assert [m["role"] for m in row.prompt] == ["system", "user"]
    assert row.answer == "Madrid."
    assert row.messages[-1] == {"role": "assistant", "content": "Madrid."}
    assert row.user_turns == ["Capital of Spain?"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (chat(("user", "hi")), r"train\.jsonl:2: the last message is the user's, not the assistant's answer"),
        (chat(("user", "hi"), ("bot", "x")), r"train\.jsonl:2: messages\[1\]: unknown role 'bot'"),
        (chat(("assistant", "x")), r"train\.jsonl:2: the assistant's answer has no user turn before it"),
        (chat(("user", "hi"), ("assistant", " ")), r"train\.jsonl:2: messages\[1\]\.content: the answer is empty"),
        ('{"prompt": "hi"}', r"train\.jsonl:2: a row must be an object with a non-empty 'messages' list"),
        ("{not json", r"train\.jsonl:2: not JSON"),
    ],
)
def test_bad_rows_are_named_by_line(line, message):
    with pytest.raises(TrainingDataError, match=message) as refused:
        parse_training_set(GOOD + "\n" + line + "\n", "train.jsonl")
    assert "\n" not in str(refused.value)


def test_an_empty_dataset_is_refused():
    with pytest.raises(TrainingDataError, match=r"training\.dataset: train\.jsonl has no rows"):
        parse_training_set("\n  \n", "train.jsonl")


def test_a_row_longer_than_the_limit_is_refused_unless_truncation_is_on():
    rows = parse_training_set(GOOD + "\n" + GOOD + "\n", "train.jsonl")
    check_lengths(rows, [10, 12], max_seq_length=12, truncate=False)
    with pytest.raises(TrainingDataError, match=r"train\.jsonl:2: 13 tokens, longer than training\.max_seq_length 12"):
        check_lengths(rows, [10, 13], max_seq_length=12, truncate=False)
    check_lengths(rows, [10, 13], max_seq_length=12, truncate=True)


def test_leakage_guard_counts_the_rows_and_names_the_first():
    rows = parse_training_set(
        "\n".join(
            [
                GOOD,
                chat(("user", "What is  the capital of FRANCE?"), ("assistant", "Paris.")),
                chat(("user", "Other?"), ("assistant", "x")),
                chat(("user", "what is the capital of france?"), ("assistant", "Paris")),
            ]
        ),
        "train.jsonl",
    )
    questions = eval_questions(
        [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]]
    )
    with pytest.raises(
        TrainingDataError,
        match=r"2 row\(s\) ask a question of the eval set capitals\.jsonl; the first is train\.jsonl:2: "
        r"'What is  the capital of FRANCE\?'",
    ):
        check_leakage(rows, questions, "capitals.jsonl")
    check_leakage(rows[:1], questions, "capitals.jsonl")  # a shared system prompt is not a leak


def test_the_shipped_training_set_does_not_leak_into_the_eval_set():
    rows = check_training_set(
        PROJECT_DIR / "configs/train/capitals-rephrased.jsonl",
        EvaluationConfig(eval_set=PROJECT_DIR / "configs/eval/capitals.jsonl"),
    )
    assert len(rows) == 40


def test_the_leakage_guard_reads_every_eval_row(tmp_path):
    leaked = tmp_path / "train.jsonl"
    leaked.write_text(chat(("user", "What is the capital of Spain?"), ("assistant", "Madrid.")) + "\n")
    with pytest.raises(TrainingDataError, match="1 row"):
        check_training_set(leaked, EvaluationConfig(eval_set=PROJECT_DIR / "configs/eval/capitals.jsonl"))


def test_the_leakage_guard_reads_a_built_suite_and_the_items_other_split_parts_measure(tmp_path):
    suite = SuiteConfig(skills={"arithmetic": 20})
    evaluation = EvaluationConfig(suite=suite, split=SplitConfig(parts=2, part=0), max_examples=3)
    measured = {e.question for e in load_examples(evaluation)}
    elsewhere = next(e.question for e in all_examples(evaluation) if e.question not in measured)
    leaked = tmp_path / "train.jsonl"
    leaked.write_text(chat(("user", elsewhere), ("assistant", "42")) + "\n")
    with pytest.raises(TrainingDataError, match="1 row.* of the eval set suite-arithmetic; the first is train.jsonl:1"):
        check_training_set(leaked, evaluation)


def test_held_out_split_is_disjoint_seeded_and_keeps_some_for_training():
    rows = parse_training_set("\n".join([GOOD] * 10), "t.jsonl")
    train, held = split_held_out(rows, 0.2, seed=0)
    assert len(train) == 8 and len(held) == 2
    assert {r.where for r in train}.isdisjoint(r.where for r in held)
    assert split_held_out(rows, 0.2, seed=0) == (train, held)
    assert split_held_out(rows, 0.0, seed=0) == (rows, [])
    with pytest.raises(TrainingDataError, match=r"training\.held_out_fraction: 0\.5 keeps all 1 rows out"):
        split_held_out(rows[:1], 0.5, seed=0)


def test_target_modules_default_per_architecture_and_must_exist():
    assert target_modules(None, "llama") == ("q_proj", "v_proj")
    assert target_modules(None, "phi3") == ("qkv_proj",)
    assert target_modules(("o_proj",), "phi3") == ("o_proj",)
    with pytest.raises(TrainingDataError, match=r"training\.lora\.target_modules: no default for architecture 'gpt2'"):
        target_modules(None, "gpt2")
    layers = ["model.layers.0.self_attn.qkv_proj", "model.layers.0.self_attn.o_proj", "lm_head"]
    check_target_modules(("qkv_proj",), layers, "phi3")
    with pytest.raises(
        TrainingDataError,
        match=r"training\.lora\.target_modules: the phi3 model has no layer q_proj, v_proj "
        r"\(its linear layers: lm_head, o_proj, qkv_proj\)",
    ):
        check_target_modules(("q_proj", "v_proj"), layers, "phi3")


def suite_config(tmp_path=None, dataset=None, split=None, max_rows=None):
    from slmflow.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "source": {"model": "builtin:tiny-phi3"},
            "evaluation": {
                "suite": {"skills": {"arithmetic": 60, "unit_conversions": 20}, "seed": 0},
                "split": split or {"parts": 4, "part": 1, "seed": 0},
            },
            "registry": {"model_name": "m"},
            "training": {"dataset": dataset or {"from_eval_suite": "other_parts", "max_rows": max_rows}},
        }
    )


def test_a_suite_split_trains_on_the_parts_that_are_not_evaluated():
    from slmflow.evaluation.dataset import load_examples
    from slmflow.training.dataset import check_configured_training_set

    config = suite_config()
    training_set = check_configured_training_set(config)  # the leakage guard passes: disjoint by construction
    evaluated = load_examples(config.evaluation)
    assert len(evaluated) == 20 and len(training_set.rows) == 60  # 80 items in 4 parts: one evaluated, three trained
    trained = {row.user_turns[0] for row in training_set.rows}
    assert trained.isdisjoint(e.question for e in evaluated)
    assert len(trained | {e.question for e in evaluated}) == 80  # together, the whole suite
    row = training_set.rows[0]
    assert row.where == "suite-arithmetic-unit_conversions-train-not-part1of4:1"
    assert row.answer.isdigit() and row.messages[-1] == {"role": "assistant", "content": row.answer}
    assert training_set.name == "suite-arithmetic-unit_conversions-train-not-part1of4"
    assert len(check_configured_training_set(suite_config(max_rows=7)).rows) == 7


def test_a_suite_split_is_an_mlflow_dataset_known_by_its_digest():
    """MLflow refuses a source string it cannot resolve: a suite split must still become a dataset input."""
    from slmflow.training.dataset import load_configured_training_set, training_dataset

    training_set = load_configured_training_set(suite_config())
    dataset = training_dataset(training_set)
    assert dataset.name == training_set.name and dataset.digest == training_set.digest[:16]
    assert dataset.source.to_dict()["tags"] == {"slmflow.training_set": f"training_set@{training_set.digest[:12]}"}
    assert len(dataset.df) == len(training_set.rows)


def test_the_suite_split_digest_covers_the_split_and_the_suite():
    from slmflow.training.dataset import load_configured_training_set, rows_digest

    digest = load_configured_training_set(suite_config()).digest
    assert digest == rows_digest(load_configured_training_set(suite_config()).rows) and len(digest) == 64
    others = [
        suite_config(split={"parts": 4, "part": 2, "seed": 0}),
        suite_config(split={"parts": 4, "part": 1, "seed": 1}),
        suite_config(split={"parts": 5, "part": 1, "seed": 0}),
        suite_config(max_rows=10),
    ]
    assert all(load_configured_training_set(config).digest != digest for config in others)
    # The finetune key reads the training section: it changes with the split even though the section does not.
    hashes = {config.section_hash("training") for config in [suite_config(), *others]}
    assert len(hashes) == 5


def test_the_leakage_guard_holds_for_a_suite_split(monkeypatch):
    import slmflow.training.dataset as dataset
    from slmflow.evaluation.dataset import load_examples

    config = suite_config()
    question = load_examples(config.evaluation)[3].question
    leaked = dataset.TrainingRow("suite:9", ({"role": "user", "content": question.upper()},), "42")
    monkeypatch.setattr(dataset, "suite_training_rows", lambda config: [leaked])
    with pytest.raises(TrainingDataError) as refused:
        dataset.check_configured_training_set(config)
    assert str(refused.value) == (
        "training.dataset: 1 row(s) ask a question of the eval set suite-arithmetic-unit_conversions; "
        f"the first is suite:9: '{question.upper()}'"
    )


def test_a_training_file_is_checked_against_the_evaluated_suite_part(tmp_path):
    from slmflow.evaluation.dataset import load_examples
    from slmflow.training.dataset import check_configured_training_set

    question = load_examples(suite_config().evaluation)[0].question
    train = tmp_path / "train.jsonl"
    train.write_text(GOOD + "\n" + chat(("user", question), ("assistant", "7")) + "\n")
    with pytest.raises(TrainingDataError, match=r"1 row\(s\) ask a question of the eval set .*train\.jsonl:2"):
        check_configured_training_set(suite_config(dataset=str(train)))


def test_a_suite_split_without_a_split_suite_is_refused_naming_the_fields(tmp_path):
    from slmflow.config import load_config
    from slmflow.errors import ConfigError

    path = tmp_path / "c.yaml"
    (tmp_path / "eval.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}], "reference": "x"}\n')
    path.write_text(
        "source: {model: 'builtin:tiny-phi3'}\nevaluation: {eval_set: eval.jsonl}\nregistry: {model_name: m}\n"
        "training: {dataset: {from_eval_suite: other_parts}}\n"
    )
    with pytest.raises(
        ConfigError, match=r"from_eval_suite takes the parts of evaluation\.suite that evaluation\.split"
    ):
        load_config(path)
    path.write_text(path.read_text().replace("other_parts", "all"))
    with pytest.raises(ConfigError, match=r"training\.dataset\.SuiteSplitDataset\.from_eval_suite: Input should be"):
        load_config(path)
