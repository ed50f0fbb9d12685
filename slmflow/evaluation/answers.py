"""Reading an answer as a person would: find what it asserts, not whether a string occurs in it.

An answer is right when it asserts the expected number or entity (or one of its aliases) and asserts
no rival of the same kind: "The capital is Canberra. The capital is Sydney." asserts two capitals
and is wrong. A mention after a negation or a comparison ("not Sydney", "greater than 2") asserts
nothing, and a number or name that the question itself contains is a restatement, not an answer.
Pure functions: no model, no MLflow.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["entity", "number"]

# Words that, just before a mention, make it something other than an assertion of it.
NOT_ASSERTED = frozenset({"not", "than", "nor", "neither", "except", "instead", "t", "rather", "besides"})
CUE_WINDOW = 2  # words before a mention searched for such a cue
_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
NUMBER_WORDS = {word: value for value, word in enumerate(f"{_UNITS} seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS |= {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
NUMBER_WORDS["hundred"] = 100
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")


def normalize(text: str) -> str:
    """Lower case, accents and punctuation removed, single spaces: "São Tomé" and "sao tome" read the same."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w\s]", " ", folded.lower()).split())


@dataclass(frozen=True)
class AnswerKey:
    """What a checkable answer is: the expected value, what else counts as it, and its rivals."""

    answer: str
    kind: Kind = "entity"
    aliases: tuple[str, ...] = ()
    rivals: tuple[str, ...] = ()  # other candidates of the same kind; asserting one makes the answer wrong
    tolerance: float = 0.0  # relative, for numbers


def _asserted(prefix: str) -> bool:
    """Whether a mention whose preceding text is `prefix` is asserted (no negation or comparison cue)."""
    return not NOT_ASSERTED.intersection(normalize(prefix).split()[-CUE_WINDOW:])


def _mentions(text: str, phrase: str) -> list[int]:
    """Word positions where `phrase` occurs in the normalized word list `text`."""
    words, target = text.split(), normalize(phrase).split()
    if not target:
        return []
    return [i for i in range(len(words) - len(target) + 1) if words[i : i + len(target)] == target]


def asserted_entities(text: str, phrases: Iterable[str]) -> set[str]:
    """The phrases the text asserts, longest first so that "Mexico City" is not also read as "Mexico"."""
    words = normalize(text).split()
    taken = [False] * len(words)
    found = set()
    for phrase in sorted(set(phrases), key=lambda p: -len(normalize(p).split())):
        size = len(normalize(phrase).split())
        for start in _mentions(" ".join(words), phrase):
            if any(taken[start : start + size]):
                continue
            for i in range(start, start + size):
                taken[i] = True
            if _asserted(" ".join(words[:start])):
                found.add(phrase)
    return found


def asserted_numbers(text: str) -> list[float]:
    """Every number the text asserts: digits ("1,000", "-2.5") and number words ("eight")."""
    numbers = []
    for match in _NUMBER.finditer(text):
        if _asserted(text[: match.start()]):
            numbers.append(float(match.group().replace(",", "")))
    words = normalize(text).split()
    position = 0
    while position < len(words):
        value = NUMBER_WORDS.get(words[position])
        if value is None:
            position += 1
            continue
        following = NUMBER_WORDS.get(words[position + 1], 10) if position + 1 < len(words) else 10
        compound = 20 <= value < 100 and value % 10 == 0 and following < 10  # "fifty six"
        if _asserted(" ".join(words[:position])):
            numbers.append(float(value + following if compound else value))
        position += 2 if compound else 1
    return numbers


def _same_number(value: float, expected: float, tolerance: float) -> bool:
    return abs(value - expected) <= max(1e-9, tolerance * abs(expected))


def reads_correct(prediction: str, key: AnswerKey, question: str = "") -> bool:
    """Whether the prediction asserts the expected answer and no rival; what the question says is not counted."""
    if key.kind == "number":
        return _asserts_number(prediction, key, question)
    return _asserts_entity(prediction, key, question)


def _asserts_number(prediction: str, key: AnswerKey, question: str) -> bool:
    accepted = [float(a) for a in (key.answer, *key.aliases) if _NUMBER.fullmatch(a)]
    restated = set(asserted_numbers(question)) - set(accepted)
    claims = [n for n in asserted_numbers(prediction) if n not in restated]
    return bool(claims) and all(any(_same_number(n, a, key.tolerance) for a in accepted) for n in claims)


def _asserts_entity(prediction: str, key: AnswerKey, question: str) -> bool:
    accepted = {key.answer, *key.aliases}
    in_question = asserted_entities(question, key.rivals) if question else set()
    rivals = [r for r in key.rivals if r not in in_question and normalize(r) not in map(normalize, accepted)]
    claims = asserted_entities(prediction, [*accepted, *rivals])
    return bool(claims & accepted) and not claims & set(rivals)


def skill_accuracy(skills: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """Accuracy per skill tag."""
    totals: dict[str, list[int]] = {}
    for skill, right in zip(skills, correct, strict=True):
        totals.setdefault(skill, []).append(int(right))
    return {skill: sum(values) / len(values) for skill, values in sorted(totals.items())}
