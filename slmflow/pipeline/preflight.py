"""Check the tracking server before a scheduled run: one clear line instead of a traceback from `mlflow run`.

`python -m slmflow.pipeline.preflight` exits 0 when the server at MLFLOW_TRACKING_URI answers with
the configured credentials, else prints why (never the password) and exits 1.
"""

from __future__ import annotations

import sys

from slmflow.errors import PipelineError


class TrackingServerError(PipelineError):
    """The tracking server is unreachable or refuses the credentials."""


def check_tracking_server(tracking_uri: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except MlflowException as error:
        text = str(error)
        if "401" in text or "not authenticated" in text:
            raise TrackingServerError(
                f"the tracking server {tracking_uri} refused the credentials "
                "(check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
            ) from None
        if "403" in text:
            raise TrackingServerError(f"the tracking server {tracking_uri} denied access: {error.message}") from None
        raise TrackingServerError(f"the tracking server {tracking_uri} failed: {error.message}") from None


def main() -> int:
    import mlflow

    try:
        check_tracking_server(mlflow.get_tracking_uri())
    except TrackingServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
