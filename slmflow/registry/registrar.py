"""Registering the chosen candidate: its version, tags and description, then its aliases (never stages)."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from slmflow import tags
from slmflow.config import RegistryConfig
from slmflow.errors import GateFailedError, RegistryError
from slmflow.evaluation.statistics import Interval
from slmflow.registry.aliases import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    aliased_version,
    delete_alias,
    registry_error,
    set_alias,
)
from slmflow.registry.rules import (
    Candidate,
    GateResult,
    champion_evidence,
    gate_failures,
    gate_results,
    gates_summary,
    improvement_over_base_gate,
    paired_between,
    paired_interval,
)


@dataclass(frozen=True)
class Evaluation:
    """What an evaluate run measured: the candidates, the paired comparisons, and the champion it measured."""

    run_id: str
    candidates: dict[str, Candidate]
    comparisons: dict[str, float]  # `<pair>/<statistic>`, from the run's `delta/...` metrics
    measured_champion: str | None
    champion_error: str | None
    confidence: float

    def accuracy_gap(self, candidate: str, baseline: str) -> Interval | None:
        """candidate - baseline accuracy on the same items (None when the pair was not measured)."""
        return paired_between(self.comparisons, candidate, baseline, "accuracy", self.confidence)

    def versus_base(self, flavor: str) -> Interval | None:
        """candidate - base accuracy, the base measured in the candidate's flavor (None when not measured)."""
        return paired_interval(self.comparisons, tags.versus_base(flavor), "accuracy", self.confidence)


# A fault-injection point for the end-to-end test of a job killed after creating a version and before moving
# its aliases: set to "1", the registering process kills its whole process group there (never set it otherwise).
KILL_BEFORE_ALIASES_ENV = "SLMFLOW_TEST_KILL_BEFORE_ALIASES"


@dataclass
class RegistrationResult:
    version: ModelVersion
    created: bool
    promoted: bool


class Registrar:
    def __init__(
        self,
        config: RegistryConfig,
        client: MlflowClient | None = None,
        require_improvement_over_base: bool = False,
    ) -> None:
        """`require_improvement_over_base` (training's): a gate more, candidate - base accuracy above 0."""
        self.config = config
        self.client = client or MlflowClient()
        self.require_improvement_over_base = require_improvement_over_base

    def champion(self) -> ModelVersion | None:
        """The champion, or None when the model or the alias does not exist; any other failure is raised."""
        return aliased_version(self.client, self.config.model_name, CHAMPION)

    @staticmethod
    def recorded_metrics(version: ModelVersion) -> dict[str, float]:
        return {
            key[len(tags.METRIC_PREFIX) :]: float(value)
            for key, value in version.tags.items()
            if key.startswith(tags.METRIC_PREFIX)
        }

    def find_registered(self, identity: Mapping[str, str]) -> ModelVersion | None:
        """The version already registered with the same identity (`tags.IDENTITY`, and a training set's digest)."""
        same = self._versions_with(identity)
        return same[0] if same else None

    def _versions_with(self, identity: Mapping[str, str]) -> list[ModelVersion]:
        """Every version of that identity, oldest first."""
        name = self.config.model_name
        try:
            versions = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException as error:
            if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                return []
            raise registry_error(f"cannot list the versions of '{name}'", error) from error
        same = [v for v in versions if all(v.tags.get(key) == value for key, value in identity.items())]
        return sorted(same, key=lambda v: int(v.version))

    def _evidence(self, champion: ModelVersion | None, candidate: Candidate, evaluation: Evaluation | None):
        if champion is None:
            return None
        evaluation = evaluation or Evaluation("", {candidate.flavor: candidate}, {}, None, "no paired evaluation", 0.95)
        return champion_evidence(
            str(champion.version),
            champion_model_uri(champion),
            self.recorded_metrics(champion),
            candidate,
            evaluation.candidates,
            evaluation.comparisons,
            evaluation.measured_champion,
            evaluation.champion_error,
            evaluation.confidence,
        )

    def register(
        self,
        candidate: Candidate,
        identity: Mapping[str, str],
        lineage: Mapping[str, str],
        description: str,
        evaluation: Evaluation | None = None,
    ) -> RegistrationResult:
        """Register and promote a candidate that passes the gates; refuse (or park) one that does not.

        Without an `evaluation` (no paired measurements), the champion gates read its recorded metrics."""
        existing = self.find_registered(identity)
        if existing is not None:
            if existing.tags.get(tags.ALIASES_SET) != "true":
                # A job killed between creating this version and moving the aliases: finish its promotion.
                return self._settle(existing, passed=existing.tags.get("gates") == "passed", created=False)
            return RegistrationResult(existing, created=False, promoted=False)
        champion = self.champion()
        results = gate_results(candidate, self.config.gates, self._evidence(champion, candidate, evaluation))
        if self.require_improvement_over_base:
            versus_base = evaluation.versus_base(candidate.flavor) if evaluation is not None else None
            results.append(improvement_over_base_gate(candidate.flavor, versus_base))
        failures = gate_failures(results)
        if failures and not self.config.register_on_gate_failure:
            raise GateFailedError(self._refusal(candidate, failures, None, champion))
        version = self._create_version(candidate, identity, lineage, description, results)
        first = self._versions_with(identity)[0]
        if first.version != version.version:
            # A concurrent run registered the same identity first: keep its version, withdraw ours.
            self.client.delete_model_version(self.config.model_name, version.version)
            return RegistrationResult(first, created=False, promoted=False)
        if os.environ.get(KILL_BEFORE_ALIASES_ENV) == "1":
            os.killpg(os.getpgrp(), signal.SIGKILL)
        result = self._settle(version, passed=not failures, created=True)
        if failures:
            raise GateFailedError(self._refusal(candidate, failures, version, champion))
        return result

    def _settle(self, version: ModelVersion, passed: bool, created: bool) -> RegistrationResult:
        """Move the aliases for a registered version, then mark it settled (the last write of a registration)."""
        name = self.config.model_name
        if passed:
            champion = self.champion()
            set_alias(self.client, name, CHAMPION, version.version)
            if champion is not None and champion.version != version.version:
                set_alias(self.client, name, PREVIOUS_CHAMPION, champion.version)
            if aliased_version(self.client, name, CHALLENGER) is not None:  # the latest candidate is champion now
                delete_alias(self.client, name, CHALLENGER)
        else:
            set_alias(self.client, name, CHALLENGER, version.version)
        self.client.set_model_version_tag(name, version.version, tags.ALIASES_SET, "true")
        return RegistrationResult(self.client.get_model_version(name, version.version), created, promoted=passed)

    def _create_version(
        self, candidate: Candidate, identity, lineage, description: str, results: list[GateResult]
    ) -> ModelVersion:
        import mlflow

        failures = gate_failures(results)
        all_tags = {**lineage, **identity, tags.FLAVOR: tags.flavor_of(candidate.flavor)}
        all_tags.update({tags.METRIC_PREFIX + k: repr(float(v)) for k, v in candidate.metrics.items()})
        all_tags.update({tags.GATE_PREFIX + r.name: f"{'passed' if r.passed else 'failed'}: {r.text}" for r in results})
        all_tags["gates"] = "failed: " + "; ".join(failures) if failures else "passed"
        all_tags[tags.DECISION] = "parked as challenger" if failures else "promoted to champion"
        self._describe_registered_model()
        version = mlflow.register_model(candidate.model_uri, self.config.model_name, tags=all_tags)
        lines = "\n".join(f"- {'passed' if r.passed else 'FAILED'}: {r.text}" for r in results)
        outcome = (
            f"Gates failed:\n{lines}\n\nParked as `{CHALLENGER}`; `{CHAMPION}` did not move."
            if failures
            else f"Gates passed ({self._gates_summary()}):\n{lines}\n\nPromoted to `{CHAMPION}`."
        )
        self.client.update_model_version(
            self.config.model_name, version.version, description=f"{description}\n\n{outcome}"
        )
        return self.client.get_model_version(self.config.model_name, version.version)

    def _gates_summary(self) -> str:
        return gates_summary(self.config.gates, self.require_improvement_over_base)

    def _describe_registered_model(self) -> None:
        """The registered model's description (what it is, what its aliases mean) and its tags."""
        name = self.config.model_name
        try:  # a concurrent run may create it between a look-up and a create: creating first cannot race
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        self.client.update_registered_model(name, description=registered_model_description(name))
        wanted = {
            "task": "llm/v1/chat",
            "selection_rule": self.config.selection.rule,
            "gates": self._gates_summary(),
            "aliases": f"{CHAMPION}, {CHALLENGER}, {PREVIOUS_CHAMPION}",
        }
        current = self.client.get_registered_model(name).tags
        for key, value in wanted.items():
            if current.get(key) == value:
                continue
            try:
                self.client.set_registered_model_tag(name, key, value)
            except MlflowException:
                # MLflow's tag upsert is not atomic: a concurrent run setting the same tag makes it fail.
                if self.client.get_registered_model(name).tags.get(key) != value:
                    raise

    def _refusal(
        self,
        candidate: Candidate,
        failures: list[str],
        registered: ModelVersion | None,
        champion: ModelVersion | None,
    ) -> str:
        kept = f"champion stays at version {champion.version}" if champion else "there is no champion"
        parked = (
            f"registered as version {registered.version} without promotion; " if registered else "nothing registered; "
        )
        return (
            f"candidate {candidate.flavor} ({candidate.model_uri}) failed the gates of "
            f"'{self.config.model_name}': {'; '.join(failures)}. {parked}{kept}"
        )


def registered_model_description(name: str) -> str:
    return (
        f"Chat model (OpenAI chat request and response) registered by slmflow: each version is the better of the "
        f"`onnx-chat` and `transformers-chat` flavors of one evaluated pipeline run, its metrics on the logged "
        f"model and its choice explained in its description.\n\n"
        f"Aliases:\n"
        f"- `{CHAMPION}`: the version in service, the latest candidate that passed every gate.\n"
        f"- `{CHALLENGER}`: the latest registered candidate when it is not the champion "
        f"(a version parked after failing its gates).\n"
        f"- `{PREVIOUS_CHAMPION}`: the champion before the last move.\n\n"
        f"Serve `models:/{name}@{CHAMPION}`. Roll back with `python -m slmflow.registry rollback {name}`, "
        f"which swaps `{CHAMPION}` and `{PREVIOUS_CHAMPION}`."
    )


def champion_model_uri(version: ModelVersion) -> str:
    """The logged model a registered version was made from (`models:/<model_id>`)."""
    uri = version.tags.get("model_uri") or version.source
    if not uri:
        raise RegistryError(f"version {version.version} of {version.name} has neither a model_uri tag nor a source")
    return uri


def evaluation_from_run(run, confidence: float) -> Evaluation:
    """The evaluate run's candidates, paired comparisons and champion measurement."""
    comparisons = {
        key.removeprefix(tags.DELTA_PREFIX): value
        for key, value in run.data.metrics.items()
        if key.startswith(tags.DELTA_PREFIX)
    }
    return Evaluation(
        run.info.run_id,
        candidates_from_evaluation(run),
        comparisons,
        run.data.tags.get(tags.CHAMPION_MEASURED),
        run.data.tags.get(tags.CHAMPION_ERROR),
        confidence,
    )


def candidates_from_evaluation(run) -> dict[str, Candidate]:
    """The evaluated models and their metrics, as the evaluate step logged them."""
    candidates = {}
    for tag, model_uri in run.data.tags.items():
        if tag.startswith(tags.CANDIDATE_PREFIX):
            flavor = tag[len(tags.CANDIDATE_PREFIX) :]
            metrics = {
                key[len(flavor) + 1 :]: value for key, value in run.data.metrics.items() if key.startswith(flavor + "/")
            }
            candidates[flavor] = Candidate(flavor, model_uri, metrics)
    if not candidates:
        raise GateFailedError(f"evaluate run {run.info.run_id} recorded no evaluated models")
    return candidates
