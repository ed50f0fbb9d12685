"""The eval set: JSONL rows of chat messages with a reference answer and the key fact to find in it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmflow.chat.request import parse_messages
from slmflow.errors import ConfigError


@dataclass(frozen=True)
class EvalExample:
    messages: tuple[dict[str, str], ...]
    reference: str
    answer: str

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


def load_eval_set(path: Path, max_examples: int | None = None) -> list[EvalExample]:
    """JSONL rows of {"messages": [...], "reference": full answer, "answer": the key fact}."""
    if not path.is_file():
        raise ConfigError(f"eval set not found: {path}")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            examples.append(
                EvalExample(
                    messages=tuple(parse_messages(row["messages"], where=f"{path}:{number}")),
                    reference=str(row["reference"]),
                    answer=str(row.get("answer", row["reference"])),
                )
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}:{number}: bad eval row: {error}") from None
    if not examples:
        raise ConfigError(f"eval set {path} has no rows")
    return examples[:max_examples] if max_examples else examples


def eval_dataset(examples: list[EvalExample], eval_set: Path) -> Any:
    """The examples as an MLflow dataset named after the file, so runs and model metrics point at it."""
    import mlflow
    import pandas as pd

    frame = pd.DataFrame(
        {"messages": [json.dumps(e.messages) for e in examples], "reference": [e.reference for e in examples]}
    )
    return mlflow.data.from_pandas(frame, source=str(eval_set), name=eval_set.stem)
