"""MLflow registry webhooks (MLflow >= 3.3): checking a delivery's signature, and reading an alias move.

MLflow signs each delivery (read in `mlflow/webhooks/delivery.py`, 3.17.2) with the webhook's secret:
`X-MLflow-Signature: v1,<base64 of HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")>`,
beside `X-MLflow-Delivery-Id` and `X-MLflow-Timestamp` (Unix seconds). A delivery is accepted only
with all three headers, a signature that matches (compared in constant time), and a timestamp
within `tolerance_seconds` of now, so that a recorded delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
ALIAS_CREATED = ("model_version_alias", "created")


class WebhookRefusedError(Exception):
    """The delivery is not signed, or not signed with our secret, or too old or new: HTTP 401."""


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for this delivery."""
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> str:
    """The delivery id of a correctly signed, fresh delivery; raises WebhookRefusedError otherwise.
    `headers` is looked up case-insensitively (pass Starlette's headers or any mapping)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    signature = lowered.get(SIGNATURE_HEADER.lower())
    timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    delivery_id = lowered.get(DELIVERY_ID_HEADER.lower())
    if not signature or not timestamp or not delivery_id:
        raise WebhookRefusedError(
            f"unsigned delivery: {SIGNATURE_HEADER}, {TIMESTAMP_HEADER} and {DELIVERY_ID_HEADER} are required"
        )
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRefusedError(f"{TIMESTAMP_HEADER} is not a Unix time in seconds") from None
    if abs(now - sent_at) > tolerance_seconds:
        raise WebhookRefusedError(f"{TIMESTAMP_HEADER} is more than {tolerance_seconds:g} s away from now")
    expected = sign(secret, delivery_id, timestamp, body)
    # Several signatures may be sent (a secret being rotated): any one that matches is enough.
    given = [part.strip() for part in signature.split(" ") if part.strip()]
    if not any(hmac.compare_digest(candidate.encode(), expected.encode()) for candidate in given):
        raise WebhookRefusedError("the signature does not match")
    return delivery_id


@dataclass(frozen=True)
class AliasMoved:
    name: str
    alias: str
    version: str


def alias_moved(body: bytes) -> AliasMoved | None:
    """The alias move a (verified) `model_version_alias.created` delivery announces; None for other events."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or (payload.get("entity"), payload.get("action")) != ALIAS_CREATED:
        return None
    data = payload.get("data")
    if not isinstance(data, dict):
        return None
    name, alias, version = data.get("name"), data.get("alias"), data.get("version")
    if not all(isinstance(value, str) and value for value in (name, alias, version)):
        return None
    return AliasMoved(str(name), str(alias), str(version))
