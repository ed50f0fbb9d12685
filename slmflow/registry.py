"""Choosing, gating and registering the better flavor, with aliases instead of deprecated stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from slmflow.config import Gates, PipelineConfig, RegistryConfig, SelectionRule
from slmflow.errors import GateFailedError, RegistryError

CHAMPION, CHALLENGER = "champion", "challenger"
METRIC_TAG_PREFIX = "metric."
# Together these identify what was registered, the same from any checkout or machine: the source's
# content, the config's content and the pipeline's code and pins. The same three again means nothing new.
IDENTITY_TAGS = ("source_revision", "config_hash", "code_hash")

Metrics = Mapping[str, float]


@dataclass(frozen=True)
class Candidate:
    flavor: str
    model_uri: str
    metrics: Metrics


def choose_candidate(candidates: Mapping[str, Candidate], rule: SelectionRule) -> Candidate:
    """Highest accuracy, ties broken by tokens/s; or the ONNX model when within the configured margin."""
    best = max(candidates.values(), key=lambda c: (c.metrics["accuracy"], c.metrics["tokens_per_second"]))
    onnx = candidates.get("onnx-chat")
    within_margin = (
        onnx is not None and onnx.metrics["accuracy"] >= best.metrics["accuracy"] - rule.onnx_accuracy_margin
    )
    return onnx if rule.rule == "prefer_onnx" and within_margin else best


def gate_failures(metrics: Metrics, gates: Gates, champion: Metrics | None) -> list[str]:
    """Every gate the candidate misses, each naming the numbers."""
    failures = []
    if metrics["accuracy"] < gates.min_accuracy:
        failures.append(f"accuracy {metrics['accuracy']:.3f} < min_accuracy {gates.min_accuracy:.3f}")
    if metrics["tokens_per_second"] < gates.min_tokens_per_second:
        failures.append(
            f"tokens_per_second {metrics['tokens_per_second']:.1f} < min_tokens_per_second "
            f"{gates.min_tokens_per_second:.1f}"
        )
    if champion and "accuracy" in champion:
        floor = champion["accuracy"] - gates.max_accuracy_regression
        if metrics["accuracy"] < floor:
            failures.append(
                f"accuracy {metrics['accuracy']:.3f} regresses against the champion's "
                f"{champion['accuracy']:.3f} by more than max_accuracy_regression {gates.max_accuracy_regression:.3f}"
            )
    if champion and gates.max_latency_regression is not None and "latency_p50_s" in champion:
        ceiling = champion["latency_p50_s"] * (1 + gates.max_latency_regression)
        if metrics["latency_p50_s"] > ceiling:
            failures.append(
                f"latency_p50_s {metrics['latency_p50_s']:.4f} exceeds the champion's "
                f"{champion['latency_p50_s']:.4f} by more than max_latency_regression "
                f"{gates.max_latency_regression:.2f}"
            )
    return failures


@dataclass
class RegistrationResult:
    version: ModelVersion
    created: bool
    promoted: bool


class Registrar:
    def __init__(self, config: RegistryConfig, client: MlflowClient | None = None) -> None:
        self.config = config
        self.client = client or MlflowClient()

    def champion(self) -> ModelVersion | None:
        """The champion, or None when the model or the alias does not exist; any other failure is raised."""
        name = self.config.model_name
        try:
            model = self.client.get_registered_model(name)
            version = model.aliases.get(CHAMPION)
            return None if version is None else self.client.get_model_version(name, str(version))
        except MlflowException as error:
            if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                return None
            raise _registry_error(f"cannot read the champion of '{name}'", error) from error

    @staticmethod
    def recorded_metrics(version: ModelVersion) -> dict[str, float]:
        return {
            key[len(METRIC_TAG_PREFIX) :]: float(value)
            for key, value in version.tags.items()
            if key.startswith(METRIC_TAG_PREFIX)
        }

    def find_registered(self, identity: Mapping[str, str]) -> ModelVersion | None:
        """The version already registered from the same source revision, config and code, if any."""
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
            raise _registry_error(f"cannot list the versions of '{name}'", error) from error
        same = [v for v in versions if all(v.tags.get(key) == identity[key] for key in IDENTITY_TAGS)]
        return sorted(same, key=lambda v: int(v.version))

    def register(
        self, candidate: Candidate, identity: Mapping[str, str], tags: Mapping[str, str], description: str
    ) -> RegistrationResult:
        """Register and promote a candidate that passes the gates; refuse (or park) one that does not."""
        existing = self.find_registered(identity)
        if existing is not None:
            return RegistrationResult(existing, created=False, promoted=False)
        champion = self.champion()
        failures = gate_failures(
            candidate.metrics, self.config.gates, self.recorded_metrics(champion) if champion else None
        )
        if failures and not self.config.register_on_gate_failure:
            raise GateFailedError(self._refusal(candidate, failures, None, champion))
        version = self._create_version(candidate, identity, tags, description, failures)
        first = self._versions_with(identity)[0]
        if first.version != version.version:
            # A concurrent run registered the same identity first: keep its version, withdraw ours.
            self.client.delete_model_version(self.config.model_name, version.version)
            return RegistrationResult(first, created=False, promoted=False)
        if failures:
            raise GateFailedError(self._refusal(candidate, failures, version, champion))
        self.client.set_registered_model_alias(self.config.model_name, CHALLENGER, version.version)
        self.client.set_registered_model_alias(self.config.model_name, CHAMPION, version.version)
        return RegistrationResult(version, created=True, promoted=True)

    def _create_version(self, candidate, identity, tags, description, failures) -> ModelVersion:
        import mlflow

        all_tags = {**tags, **identity, "flavor": candidate.flavor}
        all_tags.update({METRIC_TAG_PREFIX + k: repr(float(v)) for k, v in candidate.metrics.items()})
        all_tags["gates"] = "failed: " + "; ".join(failures) if failures else "passed"
        version = mlflow.register_model(candidate.model_uri, self.config.model_name, tags=all_tags)
        self.client.update_model_version(self.config.model_name, version.version, description=description)
        return self.client.get_model_version(self.config.model_name, version.version)

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


def _registry_error(what: str, error: MlflowException) -> RegistryError:
    return RegistryError(f"{what}: {error.error_code}: {error.message}")


def registration_identity(config: PipelineConfig, source_revision: str, code_hash: str) -> dict[str, str]:
    return {"source_revision": source_revision, "config_hash": config.config_hash(), "code_hash": code_hash}


def registration_tags(config: PipelineConfig, candidate: Candidate, evaluate_run_id: str, git_commit: str) -> dict:
    """Lineage that is not identity: the same model registered from another commit is not new."""
    return {
        "source": _source_label(config),
        "evaluate_run_id": evaluate_run_id,
        "model_uri": candidate.model_uri,
        "git_commit": git_commit,
    }


def registration_description(
    config: PipelineConfig, candidate: Candidate, source_revision: str, evaluate_run_id: str
) -> str:
    return (
        f"{candidate.flavor} chat model from {_source_label(config)} at revision {source_revision}; "
        f"accuracy {candidate.metrics['accuracy']:.3f}, {candidate.metrics['tokens_per_second']:.1f} tokens/s "
        f"on {config.evaluation.eval_set.name} (evaluate run {evaluate_run_id})."
    )


def _source_label(config: PipelineConfig) -> str:
    """The source without a machine's path: a local folder is known by its revision (a digest)."""
    return "local folder" if config.source.kind == "local" else config.source.model


def candidates_from_evaluation(run) -> dict[str, Candidate]:
    """The evaluated models and their metrics, as the evaluate step logged them."""
    from slmflow.evaluation import CANDIDATE_TAG_PREFIX

    candidates = {}
    for tag, model_uri in run.data.tags.items():
        if tag.startswith(CANDIDATE_TAG_PREFIX):
            flavor = tag[len(CANDIDATE_TAG_PREFIX) :]
            metrics = {
                key[len(flavor) + 1 :]: value for key, value in run.data.metrics.items() if key.startswith(flavor + "/")
            }
            candidates[flavor] = Candidate(flavor, model_uri, metrics)
    if not candidates:
        raise GateFailedError(f"evaluate run {run.info.run_id} recorded no evaluated models")
    return candidates
