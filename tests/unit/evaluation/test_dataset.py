import pytest

from slmflow.config import EvaluationConfig, SplitConfig, SuiteConfig
from slmflow.errors import ConfigError
from slmflow.evaluation.dataset import eval_dataset, examples_digest, load_eval_set, load_examples, split_part
from testkit.processes import PROJECT_DIR

CAPITALS = PROJECT_DIR / "configs" / "eval" / "capitals.jsonl"


def test_shipped_eval_set_loads_with_its_skill():
    capitals = load_eval_set(CAPITALS)
    assert len(capitals) >= 20
    assert capitals[0].answer in capitals[0].reference
    assert capitals[0].question == capitals[0].messages[-1]["content"]
    assert {e.skill for e in capitals} == {"capitals"}  # the file's name when a row names none
    assert len(load_examples(EvaluationConfig(eval_set=CAPITALS, max_examples=5))) == 5


def test_rows_carry_their_answer_key(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "q?"}], "reference": "It is 2.", "answer": "2", "kind": "number",'
        ' "aliases": ["two"], "skill": "maths", "tolerance": 0.01}\n'
    )
    [example] = load_eval_set(path)
    assert (example.key.kind, example.key.aliases, example.key.tolerance, example.skill) == (
        "number",
        ("two",),
        0.01,
        "maths",
    )


def test_bad_eval_rows_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}], "reference": "a"}\n{"messages": []}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        load_eval_set(path)
    with pytest.raises(ConfigError, match="eval set not found"):
        load_eval_set(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="has no rows"):
        load_eval_set(empty)


def test_a_repeated_question_is_refused(tmp_path):
    path = tmp_path / "twice.jsonl"
    row = '{"messages": [{"role": "user", "content": "q?"}], "reference": "a"}\n'
    path.write_text(row * 2)
    with pytest.raises(ConfigError, match="repeat a question"):
        load_examples(EvaluationConfig(eval_set=path))


def test_splits_are_disjoint_cover_everything_and_depend_only_on_the_seed():
    suite = SuiteConfig(skills={"capitals": None, "arithmetic": 50})
    everything = load_examples(EvaluationConfig(suite=suite))
    parts = [split_part(everything, SplitConfig(parts=3, part=part, seed=7)) for part in range(3)]
    questions = [{e.question for e in part} for part in parts]
    assert sum(len(q) for q in questions) == len(everything) == len(set().union(*questions))
    assert all(abs(len(part) - len(everything) / 3) <= 1 for part in parts)
    shuffled = list(reversed(everything))
    assert {e.question for e in split_part(shuffled, SplitConfig(parts=3, part=1, seed=7))} == questions[1]
    other_seed = {e.question for e in split_part(everything, SplitConfig(parts=3, part=1, seed=8))}
    assert other_seed != questions[1]


def test_the_mlflow_dataset_is_named_after_the_file_and_changes_with_the_examples():
    evaluation = EvaluationConfig(eval_set=CAPITALS)
    examples = load_eval_set(CAPITALS)
    dataset = eval_dataset(examples, evaluation)
    assert dataset.name == "capitals"
    assert len(dataset.df) == len(examples)
    assert eval_dataset(examples[:3], evaluation).digest != dataset.digest
    assert examples_digest(examples[:3]) != examples_digest(examples)


def test_a_built_suite_is_an_mlflow_dataset_with_its_digest_in_the_source():
    from slmflow.config import EvaluationConfig
    from slmflow.evaluation.dataset import eval_dataset, examples_digest, load_examples

    evaluation = EvaluationConfig(suite={"skills": {"capitals": 5, "arithmetic": 5}, "seed": 0})
    examples = load_examples(evaluation)
    dataset = eval_dataset(examples, evaluation)
    assert dataset.name == "suite-capitals-arithmetic" and len(dataset.df) == 10
    assert dataset.source.to_dict()["tags"]["slmflow.suite"] == f"suite@{examples_digest(examples)[:12]}"
