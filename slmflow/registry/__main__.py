"""`python -m slmflow.registry rollback <name>`: move `champion` back to `previous-champion`;
`python -m slmflow.registry ask <name> <question>`: the champion's answer, to see a registered model work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from slmflow.errors import RegistryError, RollbackError
from slmflow.registry.aliases import CHAMPION, PREVIOUS_CHAMPION, rollback


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m slmflow.registry rollback|ask ...`, against MLFLOW_TRACKING_URI."""
    parser = argparse.ArgumentParser(prog="python -m slmflow.registry", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rollback_parser = commands.add_parser("rollback", help=f"move {CHAMPION} back to {PREVIOUS_CHAMPION}")
    rollback_parser.add_argument("name", help="registered model name")
    ask_parser = commands.add_parser("ask", help=f"ask the {CHAMPION} one question")
    ask_parser.add_argument("name", help="registered model name")
    ask_parser.add_argument("question")
    args = parser.parse_args(argv)
    if args.command == "ask":
        ask(args.name, args.question)
        return
    try:
        done = rollback(args.name)
    except (RollbackError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(
        f"{done.name}: {CHAMPION} moved back from version {done.from_version} to version {done.to_version}; "
        f"{PREVIOUS_CHAMPION} is now version {done.from_version}"
    )


def ask(name: str, question: str) -> None:
    import mlflow

    from slmflow.chat.response import single_prediction

    uri = f"models:/{name}@{CHAMPION}"
    model = mlflow.pyfunc.load_model(uri)
    reply = single_prediction(model.predict({"messages": [{"role": "user", "content": question}]}))
    print(f"{uri} answers {question!r}: {reply['choices'][0]['message']['content']!r}")


if __name__ == "__main__":
    main()
