"""The aliases of a registered model, read strictly, and the rollback that swaps two of them.

- `champion`: the version in service, the latest candidate that passed every gate (or a rollback's target).
- `challenger`: the latest registered candidate when it is not the champion, that is a version parked
  after failing its gates (`register_on_gate_failure: true`); removed when a newer candidate is promoted.
- `previous-champion`: the champion before the last move, what `rollback` moves `champion` back to.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from slmflow import tags
from slmflow.errors import RegistryError, RollbackError

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous-champion"


def aliased_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind an alias, or None when the model or the alias does not exist; any other failure is raised."""
    try:
        model = client.get_registered_model(name)
        version = model.aliases.get(alias)
        return None if version is None else client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise registry_error(f"cannot read the {alias} of '{name}'", error) from error


def set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version`, also when another job sets the same new alias at the same moment.

    The tracking server creates a missing alias with an INSERT: of two jobs settling one version at
    once (a job finishing a killed job's promotion while that job's twin does too), the second gets
    a unique-key violation. By then the alias exists, so setting it again is an update.
    """
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as error:
        if not _alias_created_meanwhile(error):
            raise
        client.set_registered_model_alias(name, alias, version)


def delete_alias(client: MlflowClient, name: str, alias: str) -> None:
    """Remove `alias`; one that another job removed meanwhile is gone all the same."""
    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise


def _alias_created_meanwhile(error: MlflowException) -> bool:
    message = str(error.message)
    duplicate = "duplicate key" in message or "UNIQUE constraint failed" in message  # PostgreSQL, sqlite
    return duplicate and "alias" in message


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
        raise registry_error(f"cannot read '{name}'", error) from error
    champion = aliased_version(client, name, CHAMPION)
    previous = aliased_version(client, name, PREVIOUS_CHAMPION)
    if champion is None:
        raise RollbackError(f"'{name}' has no {CHAMPION}: nothing to roll back")
    if previous is None:
        raise RollbackError(f"'{name}' has no {PREVIOUS_CHAMPION}: version {champion.version} was the first champion")
    set_alias(client, name, CHAMPION, previous.version)
    set_alias(client, name, PREVIOUS_CHAMPION, champion.version)
    client.set_model_version_tag(name, champion.version, tags.DECISION, f"rolled back to version {previous.version}")
    client.set_model_version_tag(name, previous.version, tags.DECISION, "promoted to champion by rollback")
    return Rollback(name, str(champion.version), str(previous.version))


def registry_error(what: str, error: MlflowException) -> RegistryError:
    return RegistryError(f"{what}: {error.error_code}: {error.message}")
