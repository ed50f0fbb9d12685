"""Chat templates in a model folder: where transformers and onnxruntime-genai read them, and setting one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TEMPLATE_FILE = "chat_template.jinja"


def read_chat_template(model_dir: Path) -> str | None:
    """The model's chat template, from chat_template.jinja or tokenizer_config.json."""
    template_file = model_dir / TEMPLATE_FILE
    if template_file.exists():
        return template_file.read_text()
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.exists():
        template = json.loads(tokenizer_config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def copy_with_template(model_dir: Path, template: str, out_dir: Path) -> None:
    """`model_dir` with `template` as its only chat template; the weights are hard links where possible."""
    out_dir.mkdir(parents=True)
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if path.is_dir() or relative.as_posix() in (TEMPLATE_FILE, "chat_template.json", "tokenizer_config.json"):
            continue
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, out_dir / relative)
        except OSError:  # another file system
            shutil.copy2(path, out_dir / relative)
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.exists():
        config = json.loads(tokenizer_config.read_text())
        config.pop("chat_template", None)
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / TEMPLATE_FILE).write_text(template)
