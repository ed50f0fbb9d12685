"""The mutation score per module, from `mutmut results --all true` on stdin (bin/mutation prints it).

A mutant counts as killed when a test failed on it (or it timed out); every other status, "no tests" and
"not checked" included, counts as alive. In `slmflow/pipeline/runner.py` only the cache key is scored
(`code_hash`, `cache_key`, `StepResult.output`): the rest launches `mlflow run` and is tested end to end.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "caught by type check"}
CACHE_KEY = re.compile(r"\.(x_code_hash|x_cache_key|xǁStepResultǁoutput)__mutmut_\d+$")


def module_of(mutant: str) -> str | None:
    """`slmflow.chat.request.x_parse__mutmut_3` -> `slmflow/chat/request.py`; None for mutants not scored."""
    module = mutant.split(".x")[0]  # functions are x_name, methods xǁClassǁname
    if module == "slmflow.pipeline.runner" and not CACHE_KEY.search(mutant):
        return None
    return module.replace(".", "/") + ".py"


def main() -> int:
    counts: dict[str, Counter] = defaultdict(Counter)
    for line in sys.stdin:
        name, _, status = line.strip().rpartition(": ")
        module = module_of(name) if name else None
        if module:
            counts[module][status] += 1
    if not counts:
        print("no mutation results: run `mutmut run` first", file=sys.stderr)
        return 1
    print(f"{'module':40} {'killed':>7} {'mutants':>8} {'score':>7}  alive by status")
    for module, statuses in sorted(counts.items()):
        total = sum(statuses.values())
        killed = sum(statuses[s] for s in KILLED)
        alive = ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()) if s not in KILLED)
        print(f"{module:40} {killed:7} {total:8} {killed / total:7.1%}  {alive}")
    everything = sum((c for c in counts.values()), Counter())
    killed = sum(everything[s] for s in KILLED)
    print(f"{'all':40} {killed:7} {sum(everything.values()):8} {killed / sum(everything.values()):7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
