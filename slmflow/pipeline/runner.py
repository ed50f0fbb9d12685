"""The `main` entry point's logic: run each step as a child MLflow Project run, reusing finished ones.

A step is reused when a FINISHED run of the same entry point carries the same cache key: what the
step runs (its file, the project modules it imports and the pinned environment), the config sections it reads (the
same from any checkout) and what its inputs are (content digests, or URIs that name immutable
things). Neither the checkout's path, the machine nor the git commit is in it: a README-only commit
reuses every step; the commit is recorded as a tag for lineage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from slmflow import tags
from slmflow.code import PROJECT_DIR, code_digest, module_digest
from slmflow.config import PipelineConfig, Settings
from slmflow.errors import StepFailedError
from slmflow.evaluation.model_uris import join_named_uris, split_named_uris
from slmflow.fetch.sources import resolve_revision
from slmflow.pipeline.contract import STEPS, StepContract, variant_output
from slmflow.pipeline.step import (
    CACHE_KEY_ENV,
    set_outputs,
)
from slmflow.registry.aliases import CHAMPION, aliased_version
from slmflow.registry.registrar import champion_model_uri
from slmflow.training.dataset import check_configured_training_set


def code_hash(entry_points: tuple[str, ...], project_dir: Path = PROJECT_DIR, excluded: tuple[str, ...] = ()) -> str:
    """What the steps run: their own files, the project code they import (transitively) and the pins."""
    files = [project_dir / "steps" / f"{entry_point}.py" for entry_point in entry_points]
    return code_digest(files, project_dir, excluded)


def step_code(step: StepContract, config: PipelineConfig, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The step's code digest, and each optional module's when the config field that runs it is set.

    Every step's optional modules are left out of every closure: the contract names them, and every step
    imports the contract.
    """
    every_optional = tuple(sorted({module for other in STEPS.values() for _, module in other.optional_code}))
    code = {"step": code_hash((step.entry_point,), project_dir, every_optional)}
    for field, module in step.optional_code:
        if config.field_is_set(field):
            code[module] = module_digest(module, project_dir)
    return code


@dataclass(frozen=True)
class Handoff:
    """A value one step hands the next: its name (a URI, never a local path) and what it is, for cache keys."""

    value: str
    content: str


def cache_key(
    step: StepContract,
    parameters: Mapping[str, str | Handoff],
    config: PipelineConfig,
    project_dir: Path = PROJECT_DIR,
) -> str:
    """The config parameter counts by the sections the step reads, not by where the file is."""
    payload = {
        "entry_point": step.entry_point,
        "inputs": {
            name: value.content if isinstance(value, Handoff) else str(value)
            for name, value in sorted(parameters.items())
            if name != "config"
        },
        "config": config.section_hash(*step.sections),
        "code": step_code(step, config, project_dir),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class StepResult:
    run: Run
    cached: bool

    def output(self, name: str) -> Handoff:
        recorded = self.run.data.tags
        value = recorded.get(tags.OUTPUT_PREFIX + name)
        if value is None:
            raise StepFailedError(f"step run {self.run.info.run_id} recorded no output '{name}'")
        return Handoff(value, recorded.get(tags.CONTENT_PREFIX + name, value))


class StepRunner:
    """Runs steps as children of the active (parent) run."""

    def __init__(self, config: PipelineConfig, use_cache: bool, project_uri: str = str(PROJECT_DIR)) -> None:
        self.client = MlflowClient()
        parent = mlflow.active_run()
        if parent is None:
            raise RuntimeError("StepRunner needs an active parent run")
        self.parent = self.client.get_run(parent.info.run_id)
        self.experiment_id = self.parent.info.experiment_id
        self.env_manager = self.parent.data.tags.get(tags.PROJECT_ENV, "local")
        self.config = config
        self.use_cache = use_cache
        self.project_uri = project_uri

    def run(self, entry_point: str, parameters: Mapping[str, str | Handoff], label: str | None = None) -> StepResult:
        """`label` names the step on the parent when an entry point runs twice (the base model's logging)."""
        step = STEPS[entry_point]
        key = cache_key(step, parameters, self.config)
        finished = self._finished_run(key) if self.use_cache else None
        if finished is not None:
            result = StepResult(finished, cached=True)
        else:
            values = {name: value.value if isinstance(value, Handoff) else value for name, value in parameters.items()}
            result = StepResult(self._launch(entry_point, values, key), cached=False)
        self._record(label or entry_point, result)
        return result

    def _finished_run(self, key: str) -> Run | None:
        """Only FINISHED runs count: a child left RUNNING by a killed parent is never taken for a result."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tags.CACHE_KEY}` = '{key}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def _launch(self, entry_point: str, parameters: dict[str, str], key: str) -> Run:
        # The child tags itself with the key as it starts: a step killed with its job stays RUNNING
        # under that key, and only FINISHED runs are reused.
        os.environ[CACHE_KEY_ENV] = key
        try:
            submitted = mlflow.projects.run(
                uri=self.project_uri,
                entry_point=entry_point,
                parameters=parameters,
                env_manager=self.env_manager,  # nested runs do not inherit the caller's env manager
                experiment_id=self.experiment_id,
                synchronous=True,  # in this process group: a job killed as a whole takes its steps with it
            )
        except mlflow.exceptions.ExecutionException as error:
            raise StepFailedError(self._failure_message(entry_point, error)) from None
        finally:
            del os.environ[CACHE_KEY_ENV]
        return self.client.get_run(submitted.run_id)

    def _failure_message(self, entry_point: str, error: Exception) -> str:
        children = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tags.PARENT_RUN_ID}` = '{self.parent.info.run_id}' "
            f"and tags.`{tags.PROJECT_ENTRY_POINT}` = '{entry_point}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        cause = children[0].data.tags.get(tags.ERROR) if children else None
        return f"step '{entry_point}' failed: {cause or error}"

    def _record(self, entry_point: str, result: StepResult) -> None:
        run_id = self.parent.info.run_id
        self.client.set_tag(run_id, tags.step_run_id(entry_point), result.run.info.run_id)
        self.client.set_tag(run_id, tags.step_cached(entry_point), str(result.cached).lower())
        print(
            f"step {entry_point}: {'reused' if result.cached else 'ran'} run {result.run.info.run_id}",
            flush=True,
        )


# How the parent names the logging steps run on the base model (the same entry points, other inputs).
BASE_STEP_LABEL = "{}.base"


def champion_to_measure(model_name: str, candidate_uris: list[str]) -> Handoff:
    """The champion version for evaluate to measure beside the candidates; none when there is no champion or
    when it is one of the candidates (already measured: a re-run with nothing changed reuses evaluate)."""
    version = aliased_version(MlflowClient(), model_name, CHAMPION)
    if version is None or champion_model_uri(version) in candidate_uris:
        return Handoff(tags.NO_CHAMPION, tags.NO_CHAMPION)
    return Handoff(f"models:/{model_name}/{version.version}", champion_model_uri(version))


def log_onnx_variants(runner: StepRunner, config: PipelineConfig, config_arg: str, model: StepResult) -> Handoff:
    """log_onnx_wrapper once per source.builder variant (a change to one variant relogs only it), handed on to
    evaluate as one parameter: the single variant's URI as always, or `onnx-chat-<variant>=<uri>` pairs."""
    logged = {}
    for label in config.source.variant_labels:
        parameters: dict[str, str | Handoff] = {
            "config": config_arg,
            "onnx_uri": model.output(variant_output("onnx_uri", label)),
        }
        if label:
            parameters["variant"] = label
        step = runner.run("log_onnx_wrapper", parameters, label=variant_output("log_onnx_wrapper", label))
        logged[tags.onnx_model_name(label)] = step.output("model_uri")
    if len(logged) == 1:
        return next(iter(logged.values()))
    return Handoff(
        join_named_uris({name: handoff.value for name, handoff in logged.items()}),
        join_named_uris({name: handoff.content for name, handoff in logged.items()}),
    )


def run_pipeline(config: PipelineConfig, config_arg: str, use_cache: bool, settings: Settings) -> dict[str, str]:
    """fetch_model -> [finetune] -> log_onnx_wrapper / log_transformers_pipeline -> evaluate -> register."""
    if config.training is not None:
        # Every run, cached or not, before any step: a bad row or an eval question in the training set stops it.
        check_configured_training_set(config)
    runner = StepRunner(config, use_cache)
    # Resolved before any cache lookup: a followed hub branch counts by the commit it points at now.
    revision = resolve_revision(config.source, settings)
    mlflow.set_tag(tags.SOURCE_REVISION, revision)
    fetched = runner.run("fetch_model", {"config": config_arg, "revision": revision})
    model, training_run = fetched, {}
    if config.training is not None:
        model = runner.run(
            "finetune",
            {
                "config": config_arg,
                "checkpoint_uri": fetched.output("checkpoint_uri"),
                "source_revision": fetched.output("source_revision"),
            },
        )
        training_run = {"training_run_id": model.run.info.run_id}
    onnx = log_onnx_variants(runner, config, config_arg, model)
    transformers = runner.run(
        "log_transformers_pipeline", {"config": config_arg, "checkpoint_uri": model.output("checkpoint_uri")}
    )
    candidates = {"onnx_model_uri": onnx, "transformers_model_uri": transformers.output("model_uri")}
    candidate_uris = [
        *split_named_uris(onnx.value, tags.ONNX_MODEL_NAME).values(),
        transformers.output("model_uri").value,
    ]
    champion = champion_to_measure(config.registry.model_name, candidate_uris)
    bases: dict[str, str | Handoff] = {}
    if config.training is not None and config.training.require_improvement_over_base:
        # The base, not fine-tuned, logged in both flavors from what fetch_model handed on, for evaluate to
        # measure beside the candidates (each compared with the base in its own flavor).
        bases = {
            "base_onnx_model_uri": runner.run(
                "log_onnx_wrapper",
                {"config": config_arg, "onnx_uri": fetched.output("onnx_uri")},
                label=BASE_STEP_LABEL.format("log_onnx_wrapper"),
            ).output("model_uri"),
            "base_transformers_model_uri": runner.run(
                "log_transformers_pipeline",
                {"config": config_arg, "checkpoint_uri": fetched.output("checkpoint_uri")},
                label=BASE_STEP_LABEL.format("log_transformers_pipeline"),
            ).output("model_uri"),
        }
    evaluated = runner.run("evaluate", {"config": config_arg, **candidates, "champion_model_uri": champion, **bases})
    registered = runner.run(
        "register",
        {
            "config": config_arg,
            "evaluate_run_id": evaluated.run.info.run_id,
            "source_revision": model.output("source_revision"),
            **training_run,
        },
    )
    summary = {
        "onnx_model_uri": onnx.value,
        "transformers_model_uri": transformers.output("model_uri").value,
        "registered_model": registered.output("registered_model").value,
        "registered_version": registered.output("registered_version").value,
    }
    set_outputs(STEPS["main"], None, **summary)
    return summary
