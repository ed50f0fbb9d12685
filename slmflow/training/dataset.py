"""The training set and the checks that refuse a bad one before any training starts.

Pure logic: the file's text, token counts, a model's module names and the eval set's questions are
handed in, so every check runs without a model. Each refusal is one line naming the row or field.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmflow.chat.request import ROLES, parse_messages, quote
from slmflow.config import EvaluationConfig, PipelineConfig, SplitConfig, SuiteSplitDataset, dataset_digest
from slmflow.errors import BadRequestError, TrainingDataError
from slmflow.evaluation.dataset import (
    EvalExample,
    all_examples,
    built_by_code,
    eval_set_name,
    load_examples,
    split_part,
)

Message = dict[str, str]


@dataclass(frozen=True)
class TrainingRow:
    """One chat: the turns before the answer (the prompt) and the assistant's final answer (the target)."""

    where: str  # "file:line", for messages
    prompt: tuple[Message, ...]
    answer: str

    @property
    def messages(self) -> list[Message]:
        return [*self.prompt, {"role": "assistant", "content": self.answer}]

    @property
    def user_turns(self) -> list[str]:
        return [message["content"] for message in self.prompt if message["role"] == "user"]


def parse_training_set(text: str, name: str) -> list[TrainingRow]:
    """JSON Lines of {"messages": [...]} whose last message is the assistant's answer."""
    rows = [_parse_row(line, f"{name}:{number}") for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise TrainingDataError(f"training.dataset: {name} has no rows")
    return rows


def load_training_set(path: Path) -> list[TrainingRow]:
    if not path.is_file():
        raise TrainingDataError(f"training.dataset: file not found: {path}")
    return parse_training_set(path.read_text(), path.name)


def check_training_set(dataset: Path, evaluation: EvaluationConfig) -> list[TrainingRow]:
    """A training file's rows, refused when malformed or when one asks an eval question (every eval item counts,
    whatever the split part or max_examples: an item another part measures must not be trained on either)."""
    rows = load_training_set(dataset)
    check_eval_leakage(rows, all_examples(evaluation), evaluation)
    return rows


@dataclass(frozen=True)
class TrainingSet:
    """The configured training rows, what they are called and their content digest (sha256 of the JSON Lines)."""

    rows: list[TrainingRow]
    digest: str
    name: str
    source: str | None  # the file; None: built by project code (a suite split)


def rows_digest(rows: Sequence[TrainingRow]) -> str:
    """The rows' digest as the file `{"messages": [...]}` per line would have it: a suite split is versioned like
    a file, and the digest changes with the suite, the split or its seed."""
    import hashlib

    text = "".join(json.dumps({"messages": row.messages}) + "\n" for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def suite_training_rows(config: PipelineConfig) -> list[TrainingRow]:
    """The suite's items outside the evaluated part of its split: each question with its reference as the answer."""
    from slmflow.evaluation.suites import build_suite

    evaluation, dataset = config.evaluation, config.training.dataset if config.training else None
    if not isinstance(dataset, SuiteSplitDataset) or evaluation.suite is None or evaluation.split is None:
        raise TrainingDataError("training.dataset: from_eval_suite needs evaluation.suite and evaluation.split")
    examples = build_suite(evaluation.suite)
    split = evaluation.split
    parts = [
        split_part(examples, SplitConfig(parts=split.parts, part=part, seed=split.seed)) for part in range(split.parts)
    ]
    chosen = [example for index, part in enumerate(parts) if index != split.part for example in part]
    name = suite_training_name(config)
    rows = [
        TrainingRow(f"{name}:{number}", example.messages, example.reference)
        for number, example in enumerate(chosen[: dataset.max_rows] if dataset.max_rows else chosen, 1)
    ]
    if not rows:
        raise TrainingDataError(f"training.dataset: {name} has no rows")
    return rows


def suite_training_name(config: PipelineConfig) -> str:

    split = config.evaluation.split
    return f"{eval_set_name(config.evaluation)}-train" + (f"-not-part{split.part}of{split.parts}" if split else "")


def load_configured_training_set(config: PipelineConfig) -> TrainingSet:
    """The training section's rows: its JSON Lines file, or the suite's parts that are not evaluated."""
    if config.training is None:
        raise TrainingDataError("training: the config has no training section")
    dataset = config.training.dataset
    if isinstance(dataset, SuiteSplitDataset):
        rows = suite_training_rows(config)
        return TrainingSet(rows, rows_digest(rows), suite_training_name(config), None)
    return TrainingSet(load_training_set(dataset), dataset_digest(dataset), dataset.stem, str(dataset))


def check_configured_training_set(config: PipelineConfig) -> TrainingSet:
    """The training rows, refused when malformed or when one asks an eval question. A training file is checked
    against every eval item; a suite split (trained on the parts not evaluated) against the evaluated part."""
    training_set = load_configured_training_set(config)
    evaluation = config.evaluation
    if config.training is not None and isinstance(config.training.dataset, SuiteSplitDataset):
        evaluated = load_examples(evaluation.model_copy(update={"max_examples": None}))
    else:
        evaluated = all_examples(evaluation)
    check_eval_leakage(training_set.rows, evaluated, evaluation)
    return training_set


def check_eval_leakage(
    rows: Sequence[TrainingRow], examples: Sequence[EvalExample], evaluation: EvaluationConfig
) -> None:
    name = evaluation.eval_set.name if evaluation.eval_set is not None else eval_set_name(evaluation)
    check_leakage(rows, eval_questions(example.messages for example in examples), name)


def training_dataset(training_set: TrainingSet) -> Any:
    """The rows as an MLflow dataset named after the file (or the suite split), known by their content digest."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    frame = pd.DataFrame({"messages": [json.dumps(row.messages) for row in training_set.rows]})
    source = training_set.source or built_by_code("training_set", training_set.digest)
    return from_pandas(frame, source=source, name=training_set.name, digest=training_set.digest[:16])


def _parse_row(line: str, where: str) -> TrainingRow:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise TrainingDataError(f"{where}: not JSON: {error.msg}") from None
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise TrainingDataError(f"{where}: a row must be an object with a non-empty 'messages' list")
    for position, message in enumerate(messages):  # an unknown role is named as such, even on the last message
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise TrainingDataError(
                f"{where}: messages[{position}]: unknown role {quote(role)} (expected one of {', '.join(ROLES)})"
            )
    last = messages[-1]
    if last["role"] != "assistant":
        raise TrainingDataError(f"{where}: the last message is the {last['role']}'s, not the assistant's answer")
    if len(messages) < 2:
        raise TrainingDataError(f"{where}: the assistant's answer has no user turn before it")
    answer = last.get("content")
    if not isinstance(answer, str) or not answer.strip():
        raise TrainingDataError(f"{where}: messages[{len(messages) - 1}].content: the answer is empty or not a string")
    try:
        prompt = parse_messages(messages[:-1], where=where)
    except BadRequestError as error:
        raise TrainingDataError(error.message) from None
    return TrainingRow(where, prompt, answer)


def check_lengths(rows: Sequence[TrainingRow], lengths: Sequence[int], max_seq_length: int, truncate: bool) -> None:
    """A row longer than the limit would be trained on cut: refused unless truncation is asked for."""
    if truncate:
        return
    for row, length in zip(rows, lengths, strict=True):
        if length > max_seq_length:
            raise TrainingDataError(
                f"{row.where}: {length} tokens, longer than training.max_seq_length {max_seq_length} "
                "(shorten the row, raise the limit or set training.truncate: true)"
            )


def normalized(text: str) -> str:
    """A question as the leakage guard compares it: case and spacing do not hide a copy."""
    return " ".join(text.casefold().split())


def check_leakage(rows: Sequence[TrainingRow], eval_questions: Iterable[str], eval_name: str) -> None:
    """Refuse training rows whose user turn is an eval question: the model would be graded on its training data."""
    held_out = {normalized(question) for question in eval_questions}
    leaked = [row for row in rows if any(normalized(turn) in held_out for turn in row.user_turns)]
    if leaked:
        first = next(turn for turn in leaked[0].user_turns if normalized(turn) in held_out)
        raise TrainingDataError(
            f"training.dataset: {len(leaked)} row(s) ask a question of the eval set {eval_name}; "
            f"the first is {leaked[0].where}: {quote(first)}"
        )


def eval_questions(messages_of_examples: Iterable[Iterable[Message]]) -> list[str]:
    return [m["content"] for messages in messages_of_examples for m in messages if m["role"] == "user"]


def split_held_out(
    rows: Sequence[TrainingRow], fraction: float, seed: int
) -> tuple[list[TrainingRow], list[TrainingRow]]:
    """Rows to train on and rows kept out for a final loss, drawn by the seed (at least one kept out when asked)."""
    if fraction == 0:
        return list(rows), []
    kept_out = max(1, round(len(rows) * fraction))
    if kept_out >= len(rows):
        raise TrainingDataError(
            f"training.held_out_fraction: {fraction} keeps all {len(rows)} rows out of training (add rows or set 0)"
        )
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    held = set(order[:kept_out])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
