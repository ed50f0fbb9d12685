"""Writing benchmark results: a JSON file under results/ and a table between markers in README.md."""

from __future__ import annotations

import json
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent


def write_report(name: str, result: object, table: str) -> None:
    results_dir = BENCHMARKS_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{name.replace('-', '_')}.json").write_text(json.dumps(result, indent=2) + "\n")
    readme = BENCHMARKS_DIR / "README.md"
    text = readme.read_text()
    start_marker, end_marker = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
    readme.write_text(text[:start] + "\n" + table + "\n" + text[end:])
    print(table, flush=True)
