"""`python -m slmflow.serve --model-uri models:/<name>@champion`: the OpenAI-compatible server under uvicorn.

The API key comes from `--api-key` or, better (a command line is visible to every user of the
machine), the `SLMFLOW_API_KEY` environment variable. The MLflow webhook secret comes only from
`SLMFLOW_WEBHOOK_SECRET` (without it there is no webhook route). Neither is ever logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from slmflow.serving.scheduling import DEFAULT_MAX_GROUPS

API_KEY_ENV = "SLMFLOW_API_KEY"
WEBHOOK_SECRET_ENV = "SLMFLOW_WEBHOOK_SECRET"
# The generation thread holds the GIL between decode steps; with Python's default 5 ms switch
# interval the event loop (new requests, streamed chunks) waits that long for its turn each time.
SWITCH_INTERVAL_SECONDS = 0.0005


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def non_negative_seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m slmflow.serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-uri",
        required=True,
        action="append",
        help="any MLflow model URI, e.g. models:/<name>@champion; repeat it to serve several (the first is the "
        "default), e.g. --model-uri models:/<name>@champion --model-uri models:/<name>@challenger",
    )
    parser.add_argument(
        "--follow-interval",
        type=non_negative_seconds,
        default=30.0,
        help="seconds between reads of each followed alias (models:/<name>@<alias>); 0: only on a webhook",
    )
    parser.add_argument(
        "--webhook-tolerance",
        type=seconds,
        default=300.0,
        help=f"seconds a webhook's timestamp may be off (replays); the webhook route needs {WEBHOOK_SECRET_ENV}",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    parser.add_argument("--max-batch-size", type=positive, default=16, help="rows generated together")
    parser.add_argument(
        "--max-groups",
        type=positive,
        default=DEFAULT_MAX_GROUPS,
        help="batches generating at once, stepped in turns, so a request starts between decode steps instead of "
        "waiting for the running batch; 1: static batches",
    )
    parser.add_argument("--max-queue", type=positive, default=64, help="requests that may wait; more get 429")
    parser.add_argument("--max-body-bytes", type=positive, default=1_000_000, help="larger bodies get 413")
    parser.add_argument(
        "--header-timeout", type=seconds, default=10.0, help="seconds a connection has to send its request headers"
    )
    parser.add_argument("--body-timeout", type=seconds, default=30.0, help="seconds a request has to send its body")
    parser.add_argument(
        "--shutdown-timeout", type=seconds, default=30.0, help="seconds running requests get to finish on SIGTERM"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from slmflow.serving.app import ServerSettings, create_app
    from slmflow.serving.connections import header_timeout_protocol

    args = parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServerSettings(
        model_uris=tuple(args.model_uri),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch_size=args.max_batch_size,
        max_groups=args.max_groups,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        header_timeout_seconds=args.header_timeout,
        body_timeout_seconds=args.body_timeout,
        follow_interval_seconds=args.follow_interval,
        webhook_secret=os.environ.get(WEBHOOK_SECRET_ENV) or None,
        webhook_tolerance_seconds=args.webhook_tolerance,
    )
    logging.getLogger(__name__).info(
        "serving %s on http://%s:%d (API key %s; aliases read every %s; webhook %s)",
        ", ".join(args.model_uri),
        args.host,
        args.port,
        "required" if settings.api_key else "not required",
        f"{args.follow_interval:g} s" if args.follow_interval else "never (webhook only)",
        f"on /webhooks/mlflow (secret from {WEBHOOK_SECRET_ENV})" if settings.webhook_secret else "off",
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http=header_timeout_protocol(args.header_timeout),
        timeout_graceful_shutdown=args.shutdown_timeout,
    )


if __name__ == "__main__":
    main()
