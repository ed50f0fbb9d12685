"""MLflow webhook signatures, pure: good, bad, missing and stale deliveries, and reading an alias move.

The good signature is made by MLflow's own signing function, so a change in MLflow's format fails here.
"""

from __future__ import annotations

import json

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from slmflow.serving.webhooks import AliasMoved, WebhookRefusedError, alias_moved, sign, verify

SECRET = "s3cret-for-tests"
NOW = 1_800_000_000
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2027-01-15T08:00:00+00:00",
        "data": {"name": "chat", "alias": "champion", "version": "4"},
    }
).encode()


def headers(timestamp: int = NOW, delivery_id: str = "d-1", secret: str = SECRET, body: bytes = BODY) -> dict:
    return {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": str(timestamp),
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, str(timestamp), body.decode()),
    }


def test_our_signature_is_mlflows():
    assert sign(SECRET, "d-1", str(NOW), BODY) == headers()["X-MLflow-Signature"]
    assert sign(SECRET, "d-1", str(NOW), BODY).startswith("v1,")


def test_a_good_delivery_is_accepted_whatever_the_header_case():
    assert verify(SECRET, headers(), BODY, now=NOW) == "d-1"
    lowered = {key.lower(): value for key, value in headers().items()}
    assert verify(SECRET, lowered, BODY, now=NOW + 299) == "d-1"


@pytest.mark.parametrize(
    ("given", "body", "message"),
    [
        (headers(secret="another-secret"), BODY, "does not match"),
        (headers(), BODY.replace(b'"4"', b'"5"'), "does not match"),  # the body was changed on the way
        (headers() | {"X-MLflow-Delivery-Id": "d-2"}, BODY, "does not match"),
        (headers() | {"X-MLflow-Signature": "v1,"}, BODY, "does not match"),
        (headers() | {"X-MLflow-Signature": "v2," + headers()["X-MLflow-Signature"][3:]}, BODY, "does not match"),
        ({k: v for k, v in headers().items() if k != "X-MLflow-Signature"}, BODY, "unsigned"),
        ({k: v for k, v in headers().items() if k != "X-MLflow-Timestamp"}, BODY, "unsigned"),
        ({k: v for k, v in headers().items() if k != "X-MLflow-Delivery-Id"}, BODY, "unsigned"),
        ({}, BODY, "unsigned"),
        (headers() | {"X-MLflow-Timestamp": "soon"}, BODY, "not a Unix time"),
    ],
    ids=["secret", "body", "delivery-id", "empty", "version", "no-signature", "no-timestamp", "no-id", "none", "time"],
)
def test_a_bad_or_missing_signature_is_refused(given, body, message):
    with pytest.raises(WebhookRefusedError, match=message):
        verify(SECRET, given, body, now=NOW)


@pytest.mark.parametrize("sent_at", [NOW - 301, NOW + 301, 0])
def test_a_stale_or_future_delivery_is_refused_even_correctly_signed(sent_at):
    with pytest.raises(WebhookRefusedError, match="away from now"):
        verify(SECRET, headers(timestamp=sent_at), BODY, now=NOW)
    assert verify(SECRET, headers(timestamp=sent_at), BODY, now=sent_at) == "d-1"  # fresh, it passes


def test_one_matching_signature_among_several_is_enough():
    rotated = headers() | {"X-MLflow-Signature": "v1,b2xk " + headers()["X-MLflow-Signature"]}
    assert verify(SECRET, rotated, BODY, now=NOW) == "d-1"


def test_an_alias_move_is_read_from_its_delivery_and_other_events_are_not():
    assert alias_moved(BODY) == AliasMoved("chat", "champion", "4")
    other = json.loads(BODY) | {"entity": "model_version", "action": "created"}
    assert alias_moved(json.dumps(other).encode()) is None
    assert alias_moved(b"not json") is None
    broken = json.loads(BODY) | {"data": {"name": "chat", "alias": "champion"}}
    assert alias_moved(json.dumps(broken).encode()) is None
    assert alias_moved(b"[]") is None
