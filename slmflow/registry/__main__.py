"""`python -m slmflow.registry rollback <name>`: move `champion` back to `previous-champion`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from slmflow.errors import RegistryError, RollbackError
from slmflow.registry.aliases import CHAMPION, PREVIOUS_CHAMPION, rollback


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


if __name__ == "__main__":
    main()
