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
from slmflow.config import EvaluationConfig
from slmflow.errors import BadRequestError, TrainingDataError

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
    """The rows, refused when malformed or when one asks an eval question (every eval item counts, whatever
    the split part or max_examples: an item another part measures must not be trained on either)."""
    from slmflow.evaluation.dataset import all_examples, eval_set_name

    rows = load_training_set(dataset)
    examples = all_examples(evaluation)
    eval_name = evaluation.eval_set.name if evaluation.eval_set is not None else eval_set_name(evaluation)
    check_leakage(rows, eval_questions(example.messages for example in examples), eval_name)
    return rows


def training_dataset(rows: Sequence[TrainingRow], path: Path, digest: str) -> Any:
    """The rows as an MLflow dataset named after the file, known by the file's content digest."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    frame = pd.DataFrame({"messages": [json.dumps(row.messages) for row in rows]})
    return from_pandas(frame, source=str(path), name=path.stem, digest=digest[:16])


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
