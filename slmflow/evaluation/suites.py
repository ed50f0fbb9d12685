"""Eval suites built offline from data in the repository (`data/`), deterministic for a seed.

Each builder returns items of one skill with a checkable answer: the capitals of the UN member
states (with accepted aliases, and every capital and commonly mistaken city as rivals), seeded
arithmetic, seeded unit conversions, and short facts.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

from slmflow.config import SuiteConfig
from slmflow.errors import ConfigError
from slmflow.evaluation.answers import AnswerKey
from slmflow.evaluation.dataset import EvalExample

DATA_DIR = Path(__file__).resolve().parent / "data"
CAPITAL_QUESTIONS = (
    "What is the capital of {country}? Answer with the city name.",
    "Which city is the capital of {country}? Answer with the city name.",
    "Name the capital city of {country}.",
)
NUMBER_ONLY = "Answer with the number only."


def _item(question: str, reference: str, key: AnswerKey, skill: str) -> EvalExample:
    return EvalExample(({"role": "user", "content": question},), reference, key, skill)


def _table(name: str) -> list[dict[str, str]]:
    with (DATA_DIR / name).open(newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def _names(cell: str) -> tuple[str, ...]:
    return tuple(name for name in cell.split("|") if name)


def capitals(rng: random.Random) -> list[EvalExample]:
    rows = _table("un_capitals.tsv")
    rivals = tuple(
        sorted({name for row in rows for name in (row["capital"], *_names(row["aliases"]), *_names(row["mistakes"]))})
    )
    return [
        _item(
            rng.choice(CAPITAL_QUESTIONS).format(country=row["country"]),
            f"The capital of {row['country']} is {row['capital']}.",
            AnswerKey(row["capital"], "entity", _names(row["aliases"]), rivals),
            "capitals",
        )
        for row in rows
    ]


def arithmetic(rng: random.Random) -> list[EvalExample]:
    """Sums and differences of two-digit numbers, products of small ones; no result equals an operand."""
    items: dict[str, EvalExample] = {}
    while len(items) < 300:
        operation = rng.choice(("plus", "minus", "times"))
        if operation == "times":
            a, b = rng.randint(3, 19), rng.randint(3, 19)
            result = a * b
        else:
            a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=operation == "minus")
            result = a + b if operation == "plus" else a - b
        if result in (a, b) or result <= 0:
            continue
        question = f"What is {a} {operation} {b}? {NUMBER_ONLY}"
        items[question] = _item(question, str(result), AnswerKey(str(result), "number"), "arithmetic")
    return list(items.values())


def unit_conversions(rng: random.Random) -> list[EvalExample]:
    items = []
    for row in _table("units.tsv"):
        for quantity in range(2, 13):
            result = quantity * int(row["factor"])
            question = f"How many {row['to']} are in {quantity} {row['from']}? {NUMBER_ONLY}"
            items.append(_item(question, str(result), AnswerKey(str(result), "number"), "unit_conversions"))
    rng.shuffle(items)
    return items


def facts(rng: random.Random) -> list[EvalExample]:
    rows = [json.loads(line) for line in (DATA_DIR / "facts.jsonl").read_text().splitlines() if line.strip()]
    return [
        _item(
            row["question"],
            row["answer"],
            AnswerKey(row["answer"], row["kind"], tuple(row.get("aliases", ())), tuple(row.get("rivals", ()))),
            "facts",
        )
        for row in rows
    ]


BUILDERS: dict[str, Callable[[random.Random], list[EvalExample]]] = {
    "capitals": capitals,
    "arithmetic": arithmetic,
    "unit_conversions": unit_conversions,
    "facts": facts,
}


def build_suite(suite: SuiteConfig) -> list[EvalExample]:
    """Each configured skill's items (all, or a seeded sample of the configured count), skill after skill."""
    examples = []
    for skill, count in suite.skills.items():
        rng = random.Random(f"{suite.seed}:{skill}")
        items = BUILDERS[skill](rng)
        if count is not None:
            if count > len(items):
                raise ConfigError(f"evaluation.suite.skills.{skill}: {count} items asked, the skill has {len(items)}")
            items = rng.sample(items, count)
        examples.extend(items)
    return examples
