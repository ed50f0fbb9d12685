"""Eval sets: JSONL rows or a suite built by project code, each item a question with a checkable answer
and a skill tag; split into disjoint parts by a seed; versioned by their digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmflow.chat.request import parse_messages
from slmflow.config import EvaluationConfig, SplitConfig
from slmflow.errors import ConfigError
from slmflow.evaluation.answers import AnswerKey


@dataclass(frozen=True)
class EvalExample:
    messages: tuple[dict[str, str], ...]
    reference: str  # a full answer, for exact match and ROUGE-L
    key: AnswerKey
    skill: str

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]

    @property
    def answer(self) -> str:
        return self.key.answer


def load_eval_set(path: Path) -> list[EvalExample]:
    """JSONL rows of {"messages", "reference", "answer"} and optionally "aliases", "rivals", "kind",
    "tolerance" and "skill" (else the file's name)."""
    if not path.is_file():
        raise ConfigError(f"eval set not found: {path}")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = AnswerKey(
                answer=str(row.get("answer", row["reference"])),
                kind=row.get("kind", "entity"),
                aliases=tuple(row.get("aliases", ())),
                rivals=tuple(row.get("rivals", ())),
                tolerance=float(row.get("tolerance", 0.0)),
            )
            messages = tuple(parse_messages(row["messages"], where=f"{path}:{number}"))
            examples.append(EvalExample(messages, str(row["reference"]), key, str(row.get("skill", path.stem))))
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}:{number}: bad eval row: {error}") from None
    if not examples:
        raise ConfigError(f"eval set {path} has no rows")
    return examples


def split_part(examples: Sequence[EvalExample], split: SplitConfig) -> list[EvalExample]:
    """One of `split.parts` disjoint parts that together hold every example, chosen by a seeded hash of
    the question: the same seed gives the same parts on any machine, whatever the order of the rows."""

    def rank(example: EvalExample) -> str:
        return hashlib.sha256(f"{split.seed}\0{example.question}".encode()).hexdigest()

    ordered = sorted(examples, key=rank)
    return [example for index, example in enumerate(ordered) if index % split.parts == split.part]


def all_examples(evaluation: EvaluationConfig) -> list[EvalExample]:
    """Every item of the eval set or the built suite, before the split part and max_examples."""
    if evaluation.suite is not None:
        from slmflow.evaluation.suites import build_suite

        return build_suite(evaluation.suite)
    assert evaluation.eval_set is not None  # EvaluationConfig requires eval_set or suite
    return load_eval_set(evaluation.eval_set)


def load_examples(evaluation: EvaluationConfig) -> list[EvalExample]:
    """The configured items: the eval set or the built suite, then the split part, then max_examples."""
    examples = all_examples(evaluation)
    questions = [e.question for e in examples]
    if len(set(questions)) != len(questions):
        raise ConfigError("evaluation: the eval items repeat a question; each item must be asked once")
    if evaluation.split is not None:
        examples = split_part(examples, evaluation.split)
    return examples[: evaluation.max_examples] if evaluation.max_examples else examples


def examples_digest(examples: Sequence[EvalExample]) -> str:
    """The eval items' version: a digest of every question, answer key and skill, in order."""
    rows = [
        [list(e.messages), e.reference, e.key.answer, e.key.kind, e.key.aliases, e.key.rivals, e.key.tolerance, e.skill]
        for e in examples
    ]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def eval_set_name(evaluation: EvaluationConfig) -> str:
    """What the UI calls the eval items: the file's name, or `suite-<skills>`."""
    if evaluation.suite is not None:
        return "suite-" + "-".join(evaluation.suite.skills)
    assert evaluation.eval_set is not None  # EvaluationConfig requires eval_set or suite
    return evaluation.eval_set.stem


def eval_dataset(examples: list[EvalExample], evaluation: EvaluationConfig) -> Any:
    """The examples as an MLflow dataset named after the eval set, so runs and model metrics point at it."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    frame = pd.DataFrame(
        {
            "messages": [json.dumps(e.messages) for e in examples],
            "reference": [e.reference for e in examples],
            "answer": [e.answer for e in examples],
            "skill": [e.skill for e in examples],
        }
    )
    if evaluation.eval_set is not None:
        return from_pandas(frame, source=str(evaluation.eval_set), name=eval_set_name(evaluation))
    return from_pandas(frame, source=built_by_code("suite", examples_digest(examples)), name=eval_set_name(evaluation))


def built_by_code(kind: str, digest: str) -> Any:
    """The MLflow dataset source of data that project code builds (a suite, a suite split's training rows).

    MLflow resolves no "slmflow:suite@..." string as a source (it raises "Could not find a source
    information resolver"), so such data is a code source tagged with its content digest."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource(tags={f"slmflow.{kind}": f"{kind}@{digest[:12]}"})
