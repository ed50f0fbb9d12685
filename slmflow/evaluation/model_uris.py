"""Which logged model a `models:/` URI names: the one reader of the model URIs the steps hand each other.

The logging steps hand on `models:/<model_id>` (MLflow 3 logged-model ids start with `m-`); `main` hands
the champion to `evaluate` as a registered version, `models:/<name>/<version>`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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


def join_named_uris(uris: Mapping[str, str]) -> str:
    """Several models in one step parameter: `name=uri name=uri` (one source.builder variant each)."""
    for name, uri in uris.items():
        if not name or "=" in name or " " in name or " " in uri:
            raise ValueError(f"cannot name model {uri!r} as {name!r} in a step parameter")
    return " ".join(f"{name}={uri}" for name, uri in uris.items())


def split_named_uris(value: str, single_name: str) -> dict[str, str]:
    """`join_named_uris`'s models by name; a plain URI is the one model, named `single_name`."""
    if "=" not in value:
        return {single_name: value}
    named = {name: uri for name, _, uri in (part.partition("=") for part in value.split())}
    if not all(named) or not all(named.values()):
        raise ValueError(f"'{value}' is neither a model URI nor space-separated name=uri pairs")
    return named
