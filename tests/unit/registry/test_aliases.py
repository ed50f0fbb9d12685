"""Setting and removing aliases while another job does the same (no tracking server needed: a fake client)."""

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, RESOURCE_DOES_NOT_EXIST

from slmflow.registry.aliases import delete_alias, set_alias

DUPLICATE = (
    '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "registered_model_alias_pk"'
)


class RacingClient:
    """Fails each call once with the given error (what a concurrent job's write causes), then records it."""

    def __init__(self, error: MlflowException | None) -> None:
        self.error, self.aliases = error, {"challenger": "1"}

    def set_registered_model_alias(self, name, alias, version):
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        self.aliases[alias] = version

    def delete_registered_model_alias(self, name, alias):
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        del self.aliases[alias]


def test_an_alias_another_job_created_meanwhile_is_set_again_as_an_update():
    client = RacingClient(MlflowException(DUPLICATE, error_code=BAD_REQUEST))
    set_alias(client, "m", "champion", "1")
    assert client.aliases["champion"] == "1"
    sqlite = RacingClient(MlflowException("UNIQUE constraint failed: registered_model_aliases.alias", BAD_REQUEST))
    set_alias(sqlite, "m", "champion", "2")
    assert sqlite.aliases["champion"] == "2"


def test_any_other_failure_to_set_an_alias_is_raised():
    client = RacingClient(MlflowException('duplicate key value violates unique constraint "model_versions_pk"'))
    with pytest.raises(MlflowException, match="model_versions_pk"):
        set_alias(client, "m", "champion", "1")
    assert "champion" not in client.aliases


def test_an_alias_another_job_removed_meanwhile_is_gone_all_the_same():
    gone = RacingClient(MlflowException("alias not found", error_code=RESOURCE_DOES_NOT_EXIST))
    delete_alias(gone, "m", "challenger")  # no error: the other job removed it
    refused = RacingClient(MlflowException("permission denied", error_code=BAD_REQUEST))
    with pytest.raises(MlflowException, match="permission denied"):
        delete_alias(refused, "m", "challenger")
