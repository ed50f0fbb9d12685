"""EleutherAI lm-evaluation-harness tasks as eval suites.

A local task YAML (`output_type: generate_until`, its data a local file) is run by lm-eval's
`local-chat-completions` client against each model served by the OpenAI server, one process per model
(`lm_eval_runs`, apart: only a config with a task runs the server, so only its evaluate key covers it).
Each item's score (a 0/1 metric, exact match by default) then feeds the same paired statistics as
the built-in suites: the same items for every model, so differences are paired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slmflow.digests import lm_eval_data_files
from slmflow.errors import ConfigError

FIELD = "evaluation.lm_eval_task"


@dataclass(frozen=True)
class LmEvalTask:
    name: str
    metric: str  # the first of the task's metric_list: each item's 0/1 score
    config: dict[str, Any]  # the task YAML with its data files made absolute


def load_task(path: Path) -> LmEvalTask:
    """The task at `path`, checked as the config is: a generate_until task with a metric and local data."""

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{FIELD}: {path}: {problem}")

    if not path.is_file():
        raise refuse("file not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise refuse(f"not YAML: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise refuse("not an lm-eval task (no 'task' name)")
    if config.get("output_type") != "generate_until":
        raise refuse(f"output_type must be generate_until (chat completions), got {config.get('output_type')!r}")
    metrics = config.get("metric_list") or []
    if not metrics or not isinstance(metrics[0], dict) or "metric" not in metrics[0]:
        raise refuse("metric_list needs at least one metric (each item's 0/1 score)")
    files = lm_eval_data_files(path, config)
    if not files:
        raise refuse("dataset_kwargs.data_files must name the task's local data (the hub is not reached)")
    for data in files.values():
        if not data.is_file():
            raise refuse(f"data file not found: {data}")
    absolute = {split: str(data) for split, data in files.items()}
    config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": absolute}
    return LmEvalTask(config["task"], str(metrics[0]["metric"]), config)


def item_scores(samples: Sequence[Mapping[str, Any]], metric: str) -> list[bool]:
    """Each item's 0/1 score from lm-eval's logged samples, in document order."""
    scores = []
    for sample in sorted(samples, key=lambda s: int(s["doc_id"])):
        value = sample.get(metric)
        if value not in (0, 1, True, False):
            raise ValueError(f"lm-eval item {sample.get('doc_id')}: {metric} is {value!r}, not a 0/1 score")
        scores.append(bool(value))
    if not scores:
        raise ValueError("lm-eval returned no items")
    return scores
