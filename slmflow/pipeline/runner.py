"""The `main` entry point's logic: run each step as a child MLflow Project run, reusing finished ones.

A step is reused when a FINISHED run of the same entry point exists with the same cache key: the
parameters (as the strings MLflow stores), the git commit, a hash of the config sections the step
reads, and a hash of the code. Outputs pass downstream as parameters, so a redone step changes the
parameters of every step after it, and those are redone too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from slmflow.config import PipelineConfig
from slmflow.errors import StepFailedError
from slmflow.pipeline.step import ERROR_TAG
from slmflow.sources import sha256_file

PROJECT_DIR = Path(__file__).resolve().parents[2]
CACHE_KEY_TAG = "slmflow.cache_key"
OUTPUT_TAG_PREFIX = "slmflow.output."
GIT_COMMIT_TAG = "mlflow.source.git.commit"
PROJECT_ENV_TAG = "mlflow.project.env"

# The config sections each step reads: a change elsewhere in the config does not redo it.
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "fetch_model": ("source",),
    "log_onnx_wrapper": ("generation", "runtime"),
    "log_transformers_pipeline": ("source", "generation"),
    "evaluate": ("evaluation",),
    "register": ("registry", "source"),
}


def code_hash(entry_point: str, project_dir: Path = PROJECT_DIR) -> str:
    """The step's own file, the library it calls and the project definition."""
    digest = hashlib.sha256()
    files = [project_dir / "MLproject", project_dir / "steps" / f"{entry_point}.py"]
    files += sorted((project_dir / "slmflow").rglob("*.py"))
    files += sorted((project_dir / "slmflow" / "data").glob("*"))
    for path in files:
        digest.update(str(path.relative_to(project_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(
    entry_point: str,
    parameters: Mapping[str, str],
    git_commit: str,
    config: PipelineConfig,
    extra_inputs: Mapping[str, str] | None = None,
) -> str:
    payload = {
        "entry_point": entry_point,
        "parameters": {name: str(value) for name, value in sorted(parameters.items())},
        "git_commit": git_commit,
        "config": config.section_hash(*STEP_SECTIONS[entry_point]),
        "code": code_hash(entry_point),
        "inputs": dict(extra_inputs or {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class StepResult:
    run: Run
    cached: bool

    def has_folders(self, *names: str) -> bool:
        """Whether the folders this run recorded still exist (a cache may have been cleared since)."""
        paths = [self.run.data.tags.get(OUTPUT_TAG_PREFIX + name) for name in names]
        return all(path and Path(path).is_dir() for path in paths)

    def output(self, name: str) -> str:
        value = self.run.data.tags.get(OUTPUT_TAG_PREFIX + name)
        if value is None:
            raise StepFailedError(f"step run {self.run.info.run_id} recorded no output '{name}'")
        return value


class StepRunner:
    """Runs steps as children of the active (parent) run."""

    def __init__(self, config: PipelineConfig, use_cache: bool, project_uri: str = str(PROJECT_DIR)) -> None:
        self.client = MlflowClient()
        parent = mlflow.active_run()
        if parent is None:
            raise RuntimeError("StepRunner needs an active parent run")
        self.parent = self.client.get_run(parent.info.run_id)
        self.experiment_id = self.parent.info.experiment_id
        self.git_commit = self.parent.data.tags.get(GIT_COMMIT_TAG, "")
        self.env_manager = self.parent.data.tags.get(PROJECT_ENV_TAG, "local")
        self.config = config
        self.use_cache = use_cache
        self.project_uri = project_uri

    def run(
        self,
        entry_point: str,
        parameters: Mapping[str, str],
        extra_inputs: Mapping[str, str] | None = None,
        outputs_valid: Callable[[StepResult], bool] = lambda result: True,
    ) -> StepResult:
        parameters = {name: str(value) for name, value in parameters.items()}
        key = cache_key(entry_point, parameters, self.git_commit, self.config, extra_inputs)
        if self.use_cache:
            for run in self._finished_runs(key):
                result = StepResult(run, cached=True)
                if outputs_valid(result):
                    self._record(entry_point, result)
                    return result
        result = StepResult(self._launch(entry_point, parameters), cached=False)
        self.client.set_tag(result.run.info.run_id, CACHE_KEY_TAG, key)
        self._record(entry_point, result)
        return result

    def _finished_runs(self, key: str) -> list[Run]:
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=5,
        )

    def _launch(self, entry_point: str, parameters: dict[str, str]) -> Run:
        try:
            submitted = mlflow.projects.run(
                uri=self.project_uri,
                entry_point=entry_point,
                parameters=parameters,
                env_manager=self.env_manager,  # nested runs do not inherit the caller's env manager
                experiment_id=self.experiment_id,
                synchronous=True,
            )
        except mlflow.exceptions.ExecutionException as error:
            raise StepFailedError(self._failure_message(entry_point, error)) from None
        return self.client.get_run(submitted.run_id)

    def _failure_message(self, entry_point: str, error: Exception) -> str:
        children = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent.info.run_id}' "
            f"and tags.`mlflow.project.entryPoint` = '{entry_point}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        cause = children[0].data.tags.get(ERROR_TAG) if children else None
        return f"step '{entry_point}' failed: {cause or error}"

    def _record(self, entry_point: str, result: StepResult) -> None:
        run_id = self.parent.info.run_id
        self.client.set_tag(run_id, f"slmflow.step.{entry_point}.run_id", result.run.info.run_id)
        self.client.set_tag(run_id, f"slmflow.step.{entry_point}.cached", str(result.cached).lower())
        print(
            f"step {entry_point}: {'reused' if result.cached else 'ran'} run {result.run.info.run_id}",
            flush=True,
        )


def set_outputs(**outputs: str) -> None:
    """Record a step's outputs on its run, where `main` reads them."""
    mlflow.set_tags({OUTPUT_TAG_PREFIX + name: str(value) for name, value in outputs.items()})


def run_pipeline(config: PipelineConfig, config_arg: str, use_cache: bool) -> dict[str, str]:
    """fetch_model -> log_onnx_wrapper / log_transformers_pipeline -> evaluate -> register."""
    runner = StepRunner(config, use_cache)
    fetched = runner.run(
        "fetch_model",
        {"config": config_arg},
        outputs_valid=lambda result: result.has_folders("checkpoint_dir", "onnx_dir"),
    )
    onnx = runner.run("log_onnx_wrapper", {"config": config_arg, "onnx_dir": fetched.output("onnx_dir")})
    transformers = runner.run(
        "log_transformers_pipeline", {"config": config_arg, "checkpoint_dir": fetched.output("checkpoint_dir")}
    )
    evaluated = runner.run(
        "evaluate",
        {
            "config": config_arg,
            "onnx_model_uri": onnx.output("model_uri"),
            "transformers_model_uri": transformers.output("model_uri"),
        },
        extra_inputs={"eval_set": sha256_file(config.evaluation.eval_set)},
    )
    registered = runner.run(
        "register",
        {
            "config": config_arg,
            "evaluate_run_id": evaluated.run.info.run_id,
            "source_revision": fetched.output("source_revision"),
        },
    )
    summary = {
        "onnx_model_uri": onnx.output("model_uri"),
        "transformers_model_uri": transformers.output("model_uri"),
        "registered_model": registered.output("registered_model"),
        "registered_version": registered.output("registered_version"),
    }
    set_outputs(**summary)
    return summary
