"""Quality on real weights, as pure logic: capital questions, the answer rule and a Wilson interval."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

CAPITALS_FILE = Path(__file__).resolve().parent.parent / "slmflow" / "fetch" / "data" / "capitals.jsonl"
PHRASINGS = ("What is the capital of {}?", "Which city is the capital of {}?", "Tell me the capital of {}.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


def capital_questions(path: Path = CAPITALS_FILE, phrasings: int = len(PHRASINGS)) -> list[dict[str, str]]:
    """Every country asked in each of the first `phrasings` phrasings: question, capital."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {"question": phrasing.format(row["country"]), "capital": row["capital"]}
        for phrasing in PHRASINGS[:phrasings]
        for row in rows
    ]


def first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def _names(sentence: str, city: str) -> bool:
    return re.search(rf"\b{re.escape(city.lower())}\b", sentence.lower()) is not None


def names_capital(answer: str, capital: str, capitals: list[str]) -> bool:
    """True when the answer's first sentence names `capital` and no other city of `capitals`
    (a city inside the right one's name, as Mexico in Mexico City, does not count)."""
    sentence = first_sentence(answer)
    if not _names(sentence, capital):
        return False
    others = [city for city in capitals if city != capital and not _names(capital, city)]
    return not any(_names(sentence, city) for city in others)


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default)."""
    if total == 0:
        return 0.0, 1.0
    rate = successes / total
    centre = rate + z * z / (2 * total)
    spread = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    scale = 1 + z * z / total
    return (centre - spread) / scale, (centre + spread) / scale
