"""Which logged model a `models:/` URI names: the one reader of the model URIs the steps hand each other.

The logging steps hand on `models:/<model_id>` (MLflow 3 logged-model ids start with `m-`); `main` hands
the champion to `evaluate` as a registered version, `models:/<name>/<version>`.
"""

from __future__ import annotations

import re
from typing import Any

MODELS_SCHEME = "models:/"
_LOGGED_MODEL_ID = re.compile(r"m-[0-9A-Za-z]+")
_REGISTERED_VERSION = re.compile(r"(?P<name>.+)/(?P<version>[0-9]+)")


def logged_model_id(model_uri: str) -> str:
    """The id in a logged-model URI `models:/m-...`; a run URI, a registered version or an alias is refused."""
    reference = model_uri.removeprefix(MODELS_SCHEME)
    if not model_uri.startswith(MODELS_SCHEME) or not _LOGGED_MODEL_ID.fullmatch(reference):
        raise ValueError(f"not a logged model URI (models:/<model_id>): {model_uri}")
    return reference


def resolve_logged_model_id(model_uri: str, client: Any = None) -> str:
    """The logged model behind `models:/<model_id>`, or behind a registered version `models:/<name>/<version>`
    (read through `client`, an `MlflowClient`, made here when none is given)."""
    version = _REGISTERED_VERSION.fullmatch(model_uri.removeprefix(MODELS_SCHEME))
    if not model_uri.startswith(MODELS_SCHEME) or version is None:
        return logged_model_id(model_uri)
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
    registered = client.get_model_version(version["name"], version["version"])
    if registered.model_id:
        return registered.model_id
    # A version registered from `models:/<model_id>` may carry the id only in its source URI.
    try:
        return logged_model_id(registered.source or "")
    except ValueError:
        raise ValueError(
            f"{model_uri} names a registered version with no logged model (source {registered.source})"
        ) from None
