"""Choosing, gating and registering the better flavor, with aliases instead of deprecated stages.

The aliases of a registered model (documented in the model's description and the README):
- `champion`: the version in service, the latest candidate that passed every gate (or a rollback's target).
- `challenger`: the latest registered candidate when it is not the champion, that is a version parked
  after failing its gates (`register_on_gate_failure: true`); removed when a newer candidate is promoted.
- `previous-champion`: the champion before the last move, what `rollback` moves `champion` back to.

`python -m slmflow.registry rollback <name>` swaps `champion` and `previous-champion`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from slmflow.config import Gates, PipelineConfig, RegistryConfig, SelectionRule
from slmflow.errors import GateFailedError, RegistryError, RollbackError

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous-champion"
DECISION_TAG = "decision"  # what registration did with the version: promoted to champion, or parked
METRIC_TAG_PREFIX = "metric."
# Set once the aliases of a new version have moved: a version without it was left by a killed job.
ALIASES_SET_TAG = "aliases_set"
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


def explain_choice(candidates: Mapping[str, Candidate], rule: SelectionRule) -> str:
    """Why `choose_candidate` picks what it picks, naming each candidate's accuracy and speed, for a person."""
    chosen = choose_candidate(candidates, rule)
    measured = "; ".join(
        f"{c.flavor}: accuracy {c.metrics['accuracy']:.3f}, {c.metrics['tokens_per_second']:.1f} tokens/s"
        for c in candidates.values()
    )
    best = max(candidates.values(), key=lambda c: (c.metrics["accuracy"], c.metrics["tokens_per_second"]))
    if rule.rule == "prefer_onnx" and chosen.flavor == "onnx-chat" and best is not chosen:
        why = f"the ONNX model is within the accuracy margin {rule.onnx_accuracy_margin:.2f} of {best.flavor}"
    elif rule.rule == "prefer_onnx" and chosen.flavor == "onnx-chat":
        why = "the ONNX model is preferred and is also the most accurate"
    else:
        why = "highest accuracy, ties broken by tokens/s"
    return f"{chosen.flavor} chosen by rule {rule.rule}: {why} ({measured})."


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
        return aliased_version(self.client, self.config.model_name, CHAMPION)

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
            if existing.tags.get(ALIASES_SET_TAG) != "true":
                # A job killed between creating this version and moving the aliases: finish its promotion.
                return self._settle(existing, passed=existing.tags.get("gates") == "passed", created=False)
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
        result = self._settle(version, passed=not failures, created=True)
        if failures:
            raise GateFailedError(self._refusal(candidate, failures, version, champion))
        return result

    def _settle(self, version: ModelVersion, passed: bool, created: bool) -> RegistrationResult:
        """Move the aliases for a registered version, then mark it settled (the last write of a registration)."""
        name = self.config.model_name
        if passed:
            champion = self.champion()
            self.client.set_registered_model_alias(name, CHAMPION, version.version)
            if champion is not None and champion.version != version.version:
                self.client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion.version)
            if aliased_version(self.client, name, CHALLENGER) is not None:  # the latest candidate is champion now
                self.client.delete_registered_model_alias(name, CHALLENGER)
        else:
            self.client.set_registered_model_alias(name, CHALLENGER, version.version)
        self.client.set_model_version_tag(name, version.version, ALIASES_SET_TAG, "true")
        return RegistrationResult(self.client.get_model_version(name, version.version), created, promoted=passed)

    def _create_version(self, candidate, identity, tags, description, failures) -> ModelVersion:
        import mlflow

        all_tags = {**tags, **identity, "flavor": candidate.flavor}
        all_tags.update({METRIC_TAG_PREFIX + k: repr(float(v)) for k, v in candidate.metrics.items()})
        all_tags["gates"] = "failed: " + "; ".join(failures) if failures else "passed"
        all_tags[DECISION_TAG] = "parked as challenger" if failures else "promoted to champion"
        self._describe_registered_model()
        version = mlflow.register_model(candidate.model_uri, self.config.model_name, tags=all_tags)
        outcome = (
            f"Gates failed: {'; '.join(failures)}. Parked as `{CHALLENGER}`; `{CHAMPION}` did not move."
            if failures
            else f"Gates passed ({gates_summary(self.config.gates)}). Promoted to `{CHAMPION}`."
        )
        self.client.update_model_version(
            self.config.model_name, version.version, description=f"{description}\n\n{outcome}"
        )
        return self.client.get_model_version(self.config.model_name, version.version)

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
            "gates": gates_summary(self.config.gates),
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


def gates_summary(gates: Gates) -> str:
    parts = [f"min_accuracy {gates.min_accuracy:.2f}", f"min_tokens_per_second {gates.min_tokens_per_second:g}"]
    parts.append(f"max_accuracy_regression {gates.max_accuracy_regression:.2f}")
    if gates.max_latency_regression is not None:
        parts.append(f"max_latency_regression {gates.max_latency_regression:.2f}")
    return ", ".join(parts)


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


def aliased_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind an alias, or None when the model or the alias does not exist; any other failure is raised."""
    try:
        model = client.get_registered_model(name)
        version = model.aliases.get(alias)
        return None if version is None else client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise _registry_error(f"cannot read the {alias} of '{name}'", error) from error


@dataclass(frozen=True)
class Rollback:
    name: str
    from_version: str
    to_version: str


def rollback(name: str, client: MlflowClient | None = None) -> Rollback:
    """Move `champion` back to `previous-champion`; the version rolled back from becomes `previous-champion`."""
    client = client or MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise RollbackError(f"no registered model named '{name}'") from None
        raise _registry_error(f"cannot read '{name}'", error) from error
    champion = aliased_version(client, name, CHAMPION)
    previous = aliased_version(client, name, PREVIOUS_CHAMPION)
    if champion is None:
        raise RollbackError(f"'{name}' has no {CHAMPION}: nothing to roll back")
    if previous is None:
        raise RollbackError(f"'{name}' has no {PREVIOUS_CHAMPION}: version {champion.version} was the first champion")
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion.version)
    client.set_model_version_tag(name, champion.version, DECISION_TAG, f"rolled back to version {previous.version}")
    client.set_model_version_tag(name, previous.version, DECISION_TAG, "promoted to champion by rollback")
    return Rollback(name, str(champion.version), str(previous.version))


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m slmflow.registry rollback <name>`, against MLFLOW_TRACKING_URI."""
    parser = argparse.ArgumentParser(prog="python -m slmflow.registry", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rollback_parser = commands.add_parser("rollback", help=f"move {CHAMPION} back to {PREVIOUS_CHAMPION}")
    rollback_parser.add_argument("name", help="registered model name")
    args = parser.parse_args(argv)
    try:
        done = rollback(args.name)
    except (RollbackError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(
        f"{done.name}: {CHAMPION} moved back from version {done.from_version} to version {done.to_version}; "
        f"{PREVIOUS_CHAMPION} is now version {done.from_version}"
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
    config: PipelineConfig, candidates: Mapping[str, Candidate], source_revision: str, evaluate_run_id: str
) -> str:
    """Where the version comes from and why it was chosen over the other flavor, with the numbers."""
    chosen = choose_candidate(candidates, config.registry.selection)
    return (
        f"{chosen.flavor} chat model from {_source_label(config)} at revision {source_revision}, "
        f"evaluated on {config.evaluation.eval_set.name} (evaluate run {evaluate_run_id}).\n\n"
        + explain_choice(candidates, config.registry.selection)
    )


def _source_label(config: PipelineConfig) -> str:
    """The source without a machine's path: a local folder is known by its revision (a digest)."""
    return "local folder" if config.source.kind == "local" else config.source.model


def candidates_from_evaluation(run) -> dict[str, Candidate]:
    """The evaluated models and their metrics, as the evaluate step logged them."""
    from slmflow.evaluation.logging import CANDIDATE_TAG_PREFIX

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


if __name__ == "__main__":
    main()
