"""What both chat flavors share: the pinned requirements they are logged with, and the input example."""

from __future__ import annotations

import re

from slmflow.code import PROJECT_DIR

REQUIREMENTS_FILE = PROJECT_DIR / "requirements.txt"
CHAT_EXAMPLE = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]}


def pinned_requirements(*names: str) -> list[str]:
    """Pins for the given packages, read from requirements.txt (the one source of truth)."""
    pins = {}
    for line in REQUIREMENTS_FILE.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower()] = line.strip()
    missing = [name for name in names if name.lower() not in pins]
    if missing:
        raise ValueError(f"{REQUIREMENTS_FILE} pins none of: {', '.join(missing)}")
    return [pins[name.lower()] for name in names]
